"""The layers a compressed model is deployed with (int8; packed low-bit linears, embeddings and
tied output heads; binary/ternary; clustered; quantized, remapped, frequency-aware, hashed, QR,
mixed-dimension and tensor-train embeddings), their memory accounting, the pure math they run,
and the entropy codec artifacts store weights with.

Below methods and export alike: a method builds these layers, export saves and rebuilds them, and
neither needs the other. Imports torch and numpy only (and slimkit.core).
"""

from . import legacy_names  # noqa: F401  (old artifacts name these layers by their old modules)
from .binary_linear import BinaryLinear, FakeSignLinear, TernaryLinear
from .clustered_layer import ClusteredLayer
from .frequency_embedding import FrequencyEmbedding, NarrowEmbedding
from .hashed_embedding import HashedEmbedding
from .int8_linear import DynamicInt8Linear
from .lowbit_embedding import TiedLowBitHead, WeightOnlyEmbedding
from .lowbit_linear import WeightOnlyLinear
from .mean_bag import MeanBag
from .mixed_dim_embedding import MixedDimEmbedding
from .qr_embedding import QREmbedding
from .quantized_embedding import QuantizedEmbedding
from .remapped_embedding import RemappedEmbedding
from .runtime_memory import memory_report
from .static_encoder import StaticEncoder
from .static_modules import StaticInt8Conv2d, StaticInt8Linear
from .tt_embedding import TTEmbedding

__all__ = ["BinaryLinear", "ClusteredLayer", "DynamicInt8Linear", "FakeSignLinear",
           "FrequencyEmbedding", "HashedEmbedding", "MeanBag", "MixedDimEmbedding",
           "NarrowEmbedding", "QREmbedding",
           "QuantizedEmbedding", "RemappedEmbedding", "StaticEncoder", "StaticInt8Conv2d",
           "StaticInt8Linear",
           "TernaryLinear", "TTEmbedding", "TiedLowBitHead", "WeightOnlyEmbedding",
           "WeightOnlyLinear", "memory_report"]
