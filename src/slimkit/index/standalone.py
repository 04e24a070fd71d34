"""Search a slimkit index with numpy alone: the `search.py` of a search bundle.

This file is copied verbatim into every bundle that `slimkit.index.write_search_bundle` writes,
so it imports nothing from slimkit and only numpy at module level; ONNX Runtime and the
`tokenizers` package are imported when an encoder is first used. It reads the same safetensors
file as `slimkit.index.load_index` (tensors memory-mapped read-only, pages read when touched)
and scores exactly as each slimkit index does:

- `flat`: q . x;
- `int8`: per="dim" (q * step) . codes + q . lo + 128 sum(q * step), per="vector" (q . c) scale;
- `binary`: sign bits of the (centred) items, first pass by Hamming distance of the query's bits
  (dim - 2 * Hamming) or by the centred float query against the items' +-1 vectors, then the
  top k * multiplier candidates rescored ("binary", "int8" or "float") from their rows alone;
- `pq`: asymmetric distance, the sum of the query's inner products with each item's centroids.

Items are scored a chunk at a time (ITEM_CHUNK items, QUERY_CHUNK queries), keeping the running
top k, so memory stays bounded whatever the corpus size. Equal scores are ordered by id, lower
first (rescored candidates: by their first-pass rank); slimkit's torch.topk leaves the order of
ties unspecified, so with Hamming scores, which tie often, the ids of equal scores can differ
from slimkit's while the scores are the same.

Command line (from anywhere; the bundle defaults to the folder holding this file):

    python search.py [--bundle DIR] [-k 10] [--json] [--threads N] [--verify] QUERY...

From Python: `Bundle(DIR).search_texts(["query"], k)`, `Bundle(DIR).search(vectors, k)`, or
`load_index(path).search(vectors, k)` for the index file alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1  # of the index record and of bundle.json
KEY = "slimkit_index"
KINDS = ("flat", "int8", "binary", "pq")
DTYPES: dict[str, Any] = {"F32": np.float32, "F16": np.float16, "U8": np.uint8, "I8": np.int8,
                          "I32": np.int32, "I64": np.int64}
ITEM_CHUNK = 16384  # items scored at a time (binary: unpacked to float at a time)
QUERY_CHUNK = 256  # queries scored at a time
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
BATCH = 32  # texts per encoder call
INDEX_FILE = "index.safetensors"
BUNDLE_FILE = "bundle.json"
TEXTS_FILE = "texts.jsonl"
ENCODER_DIR = "encoder"
TEXT_PREVIEW = 100  # characters of each hit's text printed by the command line


# ---------------------------------------------------------------------------------------------
# The index file


def read_safetensors(path: str | os.PathLike[str], mode: str = "r"
                     ) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(metadata, tensors) of a safetensors file, each tensor a memory map of its bytes (read-only,
    or copy-on-write with mode "c": writable in memory, never written back). ValueError naming
    the file for a malformed header."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ValueError(f"{path}: header length {length} exceeds the file")
        try:
            header = json.loads(f.read(length))
        except ValueError:
            raise ValueError(f"{path}: the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype = DTYPES.get(info.get("dtype"))
            start, end = (int(n) for n in info["data_offsets"])
            shape = tuple(int(n) for n in info["shape"])
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor {name!r}: malformed header entry") from None
        if dtype is None or start < 0 or 8 + length + end > size or \
                end - start != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            raise ValueError(f"{path}: tensor {name!r}: dtype {info.get('dtype')!r}, shape "
                             f"{shape} and offsets {start}..{end} do not fit the file")
        if end == start:
            tensors[name] = np.zeros(shape, dtype)
        else:
            tensors[name] = np.memmap(path, dtype=dtype, mode=mode, offset=8 + length + start,
                                      shape=shape)
    return meta, tensors


def read_record(path: str | os.PathLike[str], meta: dict[str, str]) -> dict[str, Any]:
    """The slimkit index record of a file's metadata; ValueError naming the file and the field
    for a missing record, another format or an unknown kind."""
    if KEY not in meta:
        raise ValueError(f"{path}: no {KEY!r} record in its metadata (not a slimkit index)")
    try:
        record = json.loads(meta[KEY])
    except (TypeError, ValueError):
        raise ValueError(f"{path}: the {KEY!r} record is not JSON") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: the {KEY!r} record is not a JSON object")
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: format {record.get('format')!r} is not supported "
                         f"(this search.py reads format {FORMAT})")
    if record.get("kind") not in KINDS:
        raise ValueError(f"{path}: kind {record.get('kind')!r} is unknown "
                         f"(known: {', '.join(KINDS)})")
    if not isinstance(record.get("config"), dict):
        raise ValueError(f"{path}: config {record.get('config')!r} is not a JSON object")
    return record


def load_index(path: str | os.PathLike[str]) -> Index:
    """The index saved at `path` (slimkit.index.save_index), its tensors memory-mapped."""
    meta, tensors = read_safetensors(path)
    record = read_record(path, meta)
    cls = {"flat": FlatIndex, "int8": Int8Index, "binary": BinaryIndex, "pq": PQIndex}
    try:
        index = cls[record["kind"]](tensors, record["config"])
    except KeyError as exc:
        raise ValueError(f"{path}: tensor {exc} is missing for kind "
                         f"{record['kind']!r}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if len(index) != record.get("items") or index.dim != record.get("dim"):
        raise ValueError(f"{path}: items/dim: the record says {record.get('items')} x "
                         f"{record.get('dim')}, the tensors hold {len(index)} x {index.dim}")
    index.path = Path(path)
    return index


# ---------------------------------------------------------------------------------------------
# Search


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, positions) [rows, min(k, n)] of each row's highest scores, best first; among
    equal scores the lower position first."""
    rows, n = scores.shape
    k = min(k, n)
    if k == 0:
        return np.zeros((rows, 0), np.float32), np.zeros((rows, 0), np.int64)
    if k < n:
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
        above = scores > kth
        equal = scores == kth
        room = k - above.sum(1, keepdims=True)
        take = above | (equal & (np.cumsum(equal, axis=1) <= room))
        pos = np.nonzero(take)[1].reshape(rows, k)
    else:
        pos = np.broadcast_to(np.arange(n), (rows, n))
    values = np.take_along_axis(scores, pos, 1)
    order = np.argsort(-values, axis=1, kind="stable")
    return (np.take_along_axis(values, order, 1).astype(np.float32, copy=False),
            np.take_along_axis(pos, order, 1).astype(np.int64, copy=False))


def hamming(query_bits: np.ndarray, item_bits: np.ndarray) -> np.ndarray:
    """int32 [Q, N] Hamming distances between packed uint8 bit rows (one word column at a time:
    memory [Q, N], never [Q, N, words])."""
    out = np.zeros((len(query_bits), len(item_bits)), np.int32)
    if hasattr(np, "bitwise_count"):  # 64-bit words where numpy (>= 2.0) counts bits
        pad = -query_bits.shape[1] % 8
        q = np.ascontiguousarray(np.pad(query_bits, ((0, 0), (0, pad)))).view(np.uint64)
        items = np.ascontiguousarray(np.pad(item_bits, ((0, 0), (0, pad)))).view(np.uint64)
        for w in range(q.shape[1]):
            out += np.bitwise_count(np.bitwise_xor.outer(q[:, w], items[:, w]))
        return out
    items = np.asarray(item_bits)
    for b in range(query_bits.shape[1]):
        out += POPCOUNT[np.bitwise_xor.outer(query_bits[:, b], items[:, b])]
    return out


def unpack_signs(bits: np.ndarray, dim: int) -> np.ndarray:
    """uint8 packed bits [rows, ceil(dim / 8)] -> float32 +-1 [rows, dim]."""
    return np.unpackbits(np.asarray(bits), axis=1, count=dim).astype(np.float32) * 2 - 1


class Index:
    """An index searched by brute force: subclasses score a chunk of items for prepared queries.
    `search(queries [Q, dim], k)` -> (scores float32 [Q, k'], ids int64 [Q, k']), k' = min(k,
    items), best first."""

    kind = ""

    def __init__(self, items: int, dim: int) -> None:
        self.items, self._dim = int(items), int(dim)
        self.path: Path | None = None

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return self.items

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries: expected a [rows, {self.dim}] matrix, got shape "
                             f"{tuple(q.shape)}")
        q = q.astype(np.float32, copy=False)
        if not bool(np.isfinite(q).all()):
            raise ValueError("queries: contains NaN or infinite values")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k: expected an int >= 1, got {k!r}")
        parts = [self._search(q[s:s + QUERY_CHUNK], int(k))
                 for s in range(0, len(q), QUERY_CHUNK)]
        if not parts:
            width = min(int(k), self.items)
            return np.zeros((0, width), np.float32), np.zeros((0, width), np.int64)
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._scan(q, k)

    def _scan(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top k of the first-pass scores over every item, a chunk of items at a time."""
        prepared = self._prepare(q)
        best = np.zeros((len(q), 0), np.float32)
        ids = np.zeros((len(q), 0), np.int64)
        for start in range(0, self.items, ITEM_CHUNK):
            stop = min(start + ITEM_CHUNK, self.items)
            values, pos = top_k(self._scores(prepared, start, stop), k)
            merged = np.concatenate([ids, pos + start], 1)
            # Earlier chunks hold lower ids, so positions order ties by id here too.
            best, pos = top_k(np.concatenate([best, values], 1), k)
            ids = np.take_along_axis(merged, pos, 1)
        return best, ids

    def _prepare(self, q: np.ndarray) -> Any:
        return q

    def _scores(self, prepared: Any, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError


def _matrix(tensors: dict[str, np.ndarray], name: str, dtype: Any) -> np.ndarray:
    t = tensors[name]
    if t.ndim != 2 or t.dtype != dtype:
        raise ValueError(f"tensor {name!r}: expected {np.dtype(dtype).name} [rows, columns], "
                         f"got {t.dtype} {t.shape}")
    return t


def _vector(tensors: dict[str, np.ndarray], name: str, size: int) -> np.ndarray:
    t = tensors[name]
    if t.shape != (size,):
        raise ValueError(f"tensor {name!r}: expected [{size}], got {t.shape}")
    return np.asarray(t, dtype=np.float32)


class FlatIndex(Index):
    kind = "flat"

    def __init__(self, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> None:
        self.vectors = _matrix(tensors, "vectors", np.float32)
        super().__init__(*self.vectors.shape)

    def _scores(self, prepared: np.ndarray, start: int, stop: int) -> np.ndarray:
        out: np.ndarray = prepared @ np.asarray(self.vectors[start:stop]).T
        return out


class Int8Index(Index):
    kind = "int8"

    def __init__(self, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> None:
        self.per = config.get("per")
        if self.per not in ("dim", "vector"):
            raise ValueError(f"config.per: expected 'dim' or 'vector', got {self.per!r}")
        self.codes = _matrix(tensors, "codes", np.int8)
        super().__init__(*self.codes.shape)
        if self.per == "dim":
            self.lo, self.step = _vector(tensors, "lo", self.dim), \
                _vector(tensors, "step", self.dim)
        else:
            self.scale = _vector(tensors, "scale", self.items)

    def _prepare(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.per == "vector":
            return q, np.zeros(0, np.float32)
        qs = q * self.step  # the dequantized score folded: (q * step) . c + a per-query constant
        return qs, (q @ self.lo + np.float32(128.0) * qs.sum(1))[:, None]

    def _scores(self, prepared: tuple[np.ndarray, np.ndarray], start: int,
                stop: int) -> np.ndarray:
        q, const = prepared
        codes = np.asarray(self.codes[start:stop]).astype(np.float32)
        out: np.ndarray = q @ codes.T
        if self.per == "vector":
            out *= self.scale[start:stop]
        else:
            out += const
        return out


class BinaryIndex(Index):
    kind = "binary"

    def __init__(self, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> None:
        try:
            dim, self.multiplier = int(config["dim"]), int(config["multiplier"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"config: expected integer dim and multiplier, got "
                             f"{config!r}") from None
        self.rescore = config.get("rescore")
        self.query = config.get("query", "bits")  # files from before the float query: bits
        if self.rescore not in ("none", "binary", "int8", "float"):
            raise ValueError(f"config.rescore: expected none, binary, int8 or float, got "
                             f"{self.rescore!r}")
        if self.query not in ("bits", "float"):
            raise ValueError(f"config.query: expected 'bits' or 'float', got {self.query!r}")
        if self.multiplier < 1:
            raise ValueError(f"config.multiplier: expected >= 1, got {self.multiplier}")
        self.bits = _matrix(tensors, "bits", np.uint8)
        if self.bits.shape[1] != -(-dim // 8):
            raise ValueError(f"tensor 'bits': expected [items, {-(-dim // 8)}] for dim {dim}, "
                             f"got {self.bits.shape}")
        super().__init__(len(self.bits), dim)
        self.center = _vector(tensors, "center", dim) if "center" in tensors else None
        if self.rescore == "int8":
            self.codes = _matrix(tensors, "int8.codes", np.int8)
            self.lo = _vector(tensors, "int8.lo", dim)
            self.step = _vector(tensors, "int8.step", dim)
            self._check_store(self.codes)
        elif self.rescore == "float":
            self.store = _matrix(tensors, "float", np.float32)
            self._check_store(self.store)

    def _check_store(self, t: np.ndarray) -> None:
        if t.shape != (self.items, self.dim):
            raise ValueError(f"rescoring store: expected [{self.items}, {self.dim}], got "
                             f"{t.shape}")

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.rescore == "none":
            return self._scan(q, k)
        _, cand = self._scan(q, k * self.multiplier)
        if self.rescore == "binary" and self.center is not None:
            q = q - self.center  # the +-1 vectors stand for centred items
        scores = np.einsum("qd,qcd->qc", q, self.rows(cand))
        values, pos = top_k(scores, k)
        return values, np.take_along_axis(cand, pos, 1)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The rescoring vectors float32 [..., dim] of items `ids`: only their rows are read
        from the file (each once, in file order)."""
        unique, inverse = np.unique(ids, return_inverse=True)
        if self.rescore == "binary":
            rows = unpack_signs(self.bits[unique], self.dim)
        elif self.rescore == "int8":
            rows = self.lo + (self.codes[unique].astype(np.float32) + np.float32(128.0)) \
                * self.step
        else:
            rows = np.asarray(self.store[unique], dtype=np.float32)
        return rows[inverse.reshape(-1)].reshape(*ids.shape, self.dim)

    def _prepare(self, q: np.ndarray) -> np.ndarray:
        q = q if self.center is None else q - self.center
        return np.packbits(q > 0, axis=1) if self.query == "bits" else q

    def _scores(self, prepared: np.ndarray, start: int, stop: int) -> np.ndarray:
        bits = np.asarray(self.bits[start:stop])
        if self.query == "bits":  # dim - 2 * Hamming: the dot product of the +-1 vectors
            return (self.dim - 2 * hamming(prepared, bits)).astype(np.float32)
        out: np.ndarray = prepared @ unpack_signs(bits, self.dim).T
        return out


class PQIndex(Index):
    kind = "pq"

    def __init__(self, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> None:
        self.codebooks = tensors["codebooks"]
        if self.codebooks.ndim != 3 or self.codebooks.dtype not in (np.float32, np.float16):
            raise ValueError(f"tensor 'codebooks': expected float [m, centroids, sub_dim], got "
                             f"{self.codebooks.dtype} {self.codebooks.shape}")
        m, _, sub = self.codebooks.shape
        self.codes = _matrix(tensors, "codes", np.uint8)
        if self.codes.shape[1] != m:
            raise ValueError(f"tensor 'codes': expected [items, {m}], got {self.codes.shape}")
        super().__init__(len(self.codes), m * sub)
        self.m, self.books = int(m), np.asarray(self.codebooks, dtype=np.float32)

    def _prepare(self, q: np.ndarray) -> np.ndarray:
        """[Q, m, centroids]: each query sub-vector's inner product with every centroid."""
        out: np.ndarray = np.einsum("qms,mks->qmk", q.reshape(len(q), self.m, -1), self.books)
        return out

    def _scores(self, prepared: np.ndarray, start: int, stop: int) -> np.ndarray:
        codes = np.asarray(self.codes[start:stop]).astype(np.intp)
        out = prepared[:, 0, codes[:, 0]]
        for i in range(1, self.m):
            out = out + prepared[:, i, codes[:, i]]
        return out


# ---------------------------------------------------------------------------------------------
# The encoder


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text(encoding="utf-8"))
    return config if isinstance(config, dict) else {}


class Encoder:
    """An exported slimkit encoder folder (model.onnx, tokenizer.json, encoder.json) in ONNX
    Runtime on CPU: `embed(texts)` -> float32 [len(texts), dim], as slimkit's OrtEncoder.embed
    (truncation to encoder.json's max_length, padding to the longest text of each batch)."""

    def __init__(self, folder: str | os.PathLike[str], *, threads: int | None = None,
                 batch_size: int = BATCH) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        folder = Path(folder)
        model = folder if folder.suffix == ".onnx" else folder / "model.onnx"
        folder = model.parent
        for need in (model, folder / "tokenizer.json"):
            if not need.is_file():
                raise ValueError(f"encoder: {need} is missing")
        meta = folder / "encoder.json"
        self.max_length = int(json.loads(meta.read_text())["max_length"]) if meta.is_file() \
            else 128
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.folder, self.batch_size = folder, int(batch_size)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = _tokenizer_config(folder)
        pad = config.get("pad_token") or "[PAD]"
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else str(pad)
        pad_id = self.tokenizer.token_to_id(pad)
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(direction=config.get("padding_side", "right"),
                                      pad_id=0 if pad_id is None else pad_id, pad_token=pad)
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads: expected >= 1, got {threads}")
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(model), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        unknown = [n for n in self.inputs
                   if n not in ("input_ids", "attention_mask", "token_type_ids")]
        if unknown:
            raise ValueError(f"encoder: {model} takes inputs {unknown} (expected input_ids, "
                             f"attention_mask, token_type_ids)")
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        self.output = "embedding" if "embedding" in names else names[0]
        width = outputs[names.index(self.output)].shape[-1]
        self.width = width if isinstance(width, int) else 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise ValueError("texts: expected a sequence of strings, got one string")
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer.encode_batch(list(texts[start:start + self.batch_size]))
            arrays = {"input_ids": np.array([e.ids for e in batch], np.int64),
                      "attention_mask": np.array([e.attention_mask for e in batch], np.int64),
                      "token_type_ids": np.array([e.type_ids for e in batch], np.int64)}
            feed = {name: arrays[name] for name in self.inputs}
            out.append(np.asarray(self.session.run([self.output], feed)[0], np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.width), np.float32)


# ---------------------------------------------------------------------------------------------
# The bundle


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Bundle:
    """A search bundle folder: bundle.json, index.safetensors, this file as search.py, and
    optionally encoder/ (texts -> query vectors) and texts.jsonl (one JSON string per item, read
    on demand: only the offsets of its lines are kept)."""

    def __init__(self, folder: str | os.PathLike[str] | None = None, *,
                 threads: int | None = None) -> None:
        self.folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
        manifest = self.folder / BUNDLE_FILE
        if not manifest.is_file():
            raise ValueError(f"{self.folder}: no {BUNDLE_FILE} (not a search bundle)")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest.read_text(encoding="utf-8"))
        except ValueError:
            raise ValueError(f"{manifest}: not JSON") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            got = self.manifest.get("format") if isinstance(self.manifest, dict) else None
            raise ValueError(f"{manifest}: format {got!r} is not supported (this search.py "
                             f"reads format {FORMAT})")
        self.index = load_index(self.folder / INDEX_FILE)
        self.threads = threads
        self.has_texts = (self.folder / TEXTS_FILE).is_file()
        self._encoder: Encoder | None = None
        self._texts: np.ndarray | None = None
        self._starts: np.ndarray | None = None

    @property
    def has_encoder(self) -> bool:
        return (self.folder / ENCODER_DIR / "model.onnx").is_file()

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            if not self.has_encoder:
                raise ValueError(f"{self.folder}: the bundle has no encoder ({ENCODER_DIR}/"
                                 f"model.onnx); search it with vectors: Bundle.search")
            self._encoder = Encoder(self.folder / ENCODER_DIR, threads=self.threads)
        return self._encoder

    def text(self, i: int) -> str | None:
        """The text of item `i`, None without texts.jsonl."""
        if not self.has_texts:
            return None
        if not 0 <= i < len(self.index):
            raise ValueError(f"text: item {i} out of range (the index has {len(self.index)})")
        if self._texts is None:
            self._index_lines()
        assert self._texts is not None and self._starts is not None
        raw = bytes(self._texts[self._starts[i]:self._starts[i + 1]])
        text = json.loads(raw.decode("utf-8"))
        if not isinstance(text, str):
            raise ValueError(f"{self.folder / TEXTS_FILE}: line {i + 1} is not a JSON string")
        return text

    def _index_lines(self) -> None:
        path = self.folder / TEXTS_FILE
        data = np.memmap(path, np.uint8, mode="r") if path.stat().st_size \
            else np.zeros(0, np.uint8)
        ends = np.flatnonzero(data == ord("\n"))
        if len(data) and data[-1] != ord("\n"):
            ends = np.append(ends, len(data))
        if len(ends) != len(self.index):
            raise ValueError(f"{path}: {len(ends)} lines for {len(self.index)} items")
        self._texts, self._starts = data, np.concatenate([[0], ends + 1])

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(vectors, k)

    def search_texts(self, queries: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
        """Each query's top k hits, best first: {"id", "score"} and "text" with texts.jsonl."""
        if isinstance(queries, str):
            raise ValueError("queries: expected a list of strings, got one string")
        scores, ids = self.search(self.encoder.embed(list(queries)), k)
        out = []
        for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True):
            hits = []
            for score, i in zip(row_scores, row_ids, strict=True):
                hit: dict[str, Any] = {"id": int(i), "score": float(score)}
                if self.has_texts:
                    hit["text"] = self.text(int(i))
                hits.append(hit)
            out.append(hits)
        return out

    def verify(self) -> None:
        """Re-hash every file bundle.json lists; ValueError naming the first that is missing,
        outside the bundle or does not match."""
        files = self.manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise ValueError(f"{self.folder / BUNDLE_FILE}: files: no hashes recorded")
        root = self.folder.resolve()
        for rel, digest in files.items():
            path = (root / rel).resolve()
            if Path(rel).is_absolute() or root not in path.parents:
                raise ValueError(f"{self.folder}: {rel}: a path outside the bundle")
            if not path.is_file():
                raise ValueError(f"{self.folder}: {rel} is missing")
            if sha256(path) != digest:
                raise ValueError(f"{self.folder}: {rel} does not match its sha256 in "
                                 f"{BUNDLE_FILE} (modified or corrupted)")


# ---------------------------------------------------------------------------------------------
# Command line


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (raised to main)
        raise _UsageError(message)


def _fail(message: str) -> int:
    print(f"search.py: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="search.py", description="Search a slimkit search bundle by text.")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="the bundle folder (default: the folder holding this file)")
    parser.add_argument("-k", type=int, default=10, help="hits per query (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--threads", type=int, default=None,
                        help="ONNX Runtime intra-op threads (default: its own choice)")
    parser.add_argument("--verify", action="store_true",
                        help="check every file's sha256 against bundle.json first")
    parser.add_argument("queries", nargs="+", metavar="QUERY")
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        return _fail(str(exc))
    if args.k < 1:
        return _fail(f"-k: expected an integer >= 1, got {args.k}")
    if args.threads is not None and args.threads < 1:
        return _fail(f"--threads: expected an integer >= 1, got {args.threads}")
    try:
        bundle = Bundle(args.bundle, threads=args.threads)
        if args.verify:
            bundle.verify()
        if not bundle.has_encoder:
            return _fail(f"{bundle.folder}: the bundle has no encoder ({ENCODER_DIR}/), so it "
                         f"cannot embed text queries; search it with vectors from Python")
        results = bundle.search_texts(args.queries, args.k)
    except (ValueError, OSError) as exc:
        return _fail(str(exc).replace("\n", " "))
    if args.json:
        print(json.dumps({"bundle": str(bundle.folder), "k": args.k,
                          "results": [{"query": q, "hits": hits}
                                      for q, hits in zip(args.queries, results, strict=True)]},
                         ensure_ascii=False))
        return 0
    for query, hits in zip(args.queries, results, strict=True):
        print(f"query: {query}")
        for rank, hit in enumerate(hits, 1):
            line = f"{rank:>4}  id {hit['id']:<8} score {hit['score']:.4f}"
            if hit.get("text") is not None:
                text = " ".join(hit["text"].split())
                line += "  " + (text[:TEXT_PREVIEW] + "..." if len(text) > TEXT_PREVIEW
                                else text)
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
