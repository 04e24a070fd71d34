"""Item indexes for embedding retrieval, exact and compressed: float inner product (`FlatIndex`),
int8 codes (`Int8Index`), sign bits searched by Hamming distance with optional rescoring
(`BinaryIndex`) and product quantization (`PQIndex`). Each searches by brute force over every
item, reports the bytes it stores, and saves to safetensors with a JSON header (no pickle)."""

from .binary import BinaryIndex
from .bundle import write_search_bundle
from .flat import FlatIndex
from .int8 import Int8Index
from .io import load_index, save_index
from .pq import PQIndex

__all__ = ["BinaryIndex", "FlatIndex", "Int8Index", "PQIndex", "load_index", "save_index",
           "write_search_bundle"]
