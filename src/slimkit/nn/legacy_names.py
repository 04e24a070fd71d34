"""The names artifacts written before these layers moved to slimkit.nn recorded for them.

A manifest names each swapped layer `module:QualName` (slimkit.core.module_types), so moving a
class changes its name. Each moved class is registered under its old name as well, so artifacts
saved by earlier versions still load. New artifacts record the slimkit.nn names.
"""

from __future__ import annotations

from torch import nn

from ..core.module_types import register_module_type
from .binary_linear import BinaryLinear, FakeSignLinear, TernaryLinear
from .clustered_layer import ClusteredLayer
from .int8_linear import DynamicInt8Linear
from .lowbit_linear import WeightOnlyLinear
from .quantized_embedding import QuantizedEmbedding
from .remapped_embedding import RemappedEmbedding
from .static_modules import StaticInt8Conv2d, StaticInt8Linear

_QUANTIZE = "slimkit.methods.quantize"
LEGACY_NAMES: dict[str, type[nn.Module]] = {
    f"{_QUANTIZE}.int8_linear:DynamicInt8Linear": DynamicInt8Linear,
    f"{_QUANTIZE}.static_modules:StaticInt8Linear": StaticInt8Linear,
    f"{_QUANTIZE}.static_modules:StaticInt8Conv2d": StaticInt8Conv2d,
    f"{_QUANTIZE}.lowbit_linear:WeightOnlyLinear": WeightOnlyLinear,
    f"{_QUANTIZE}.binary_linear:BinaryLinear": BinaryLinear,
    f"{_QUANTIZE}.binary_linear:TernaryLinear": TernaryLinear,
    f"{_QUANTIZE}.binary_linear:FakeSignLinear": FakeSignLinear,
    f"{_QUANTIZE}.clustered_layer:ClusteredLayer": ClusteredLayer,
    f"{_QUANTIZE}.quantized_embedding:QuantizedEmbedding": QuantizedEmbedding,
    "slimkit.methods.truncate.remapped_embedding:RemappedEmbedding": RemappedEmbedding,
}

for _name, _cls in LEGACY_NAMES.items():
    register_module_type(_cls, name=_name)
