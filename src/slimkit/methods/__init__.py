"""Compression methods. Importing this package registers every method with the core registry."""

from .distill.encoder import EncoderKD
from .distill.logits import LogitsKD
from .distill.static import StaticKD
from .finetune import Finetune
from .prune.magnitude import Magnitude
from .prune.sparsegpt import SparseGPT
from .prune.structured import Structured
from .prune.wanda import Wanda
from .quantize.binary import BinaryWeights
from .quantize.cluster import Cluster
from .quantize.dynamic_int8 import DynamicInt8
from .quantize.embedding import EmbeddingQuant
from .quantize.embedding_budget import EmbeddingBudget
from .quantize.embedding_frequency import EmbeddingFrequency
from .quantize.mixed import MixedPrecision
from .quantize.qat import QAT
from .quantize.static_int8 import StaticInt8
from .quantize.weight_only import WeightOnly
from .truncate.embedding_hash import EmbeddingHash
from .truncate.embedding_mixed_dim import EmbeddingMixedDim
from .truncate.embedding_qr import EmbeddingQR
from .truncate.embedding_tt import EmbeddingTT
from .truncate.hidden import Hidden
from .truncate.layers import Layers
from .truncate.vocab import Vocab

__all__ = ["QAT", "BinaryWeights", "Cluster", "DynamicInt8", "EmbeddingBudget", "EmbeddingQuant",
           "Finetune", "Layers", "LogitsKD", "Magnitude", "MixedPrecision", "StaticInt8",
           "Structured", "Vocab", "WeightOnly", "EncoderKD", "SparseGPT", "Wanda",
           "EmbeddingFrequency", "EmbeddingHash", "EmbeddingMixedDim", "EmbeddingQR",
           "EmbeddingTT", "Hidden", "StaticKD"]
