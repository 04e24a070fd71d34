"""Compression methods. Importing this package registers every method with the core registry."""

from .distill.logits import LogitsKD
from .finetune import Finetune
from .prune.magnitude import Magnitude
from .quantize.dynamic_int8 import DynamicInt8
from .quantize.embedding import EmbeddingQuant
from .truncate.layers import Layers

__all__ = ["DynamicInt8", "EmbeddingQuant", "Finetune", "Layers", "LogitsKD", "Magnitude"]
