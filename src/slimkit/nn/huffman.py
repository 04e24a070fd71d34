"""Canonical Huffman coding of integer symbol streams (pure numpy), empirical entropy, and the
relative-index (gap) streams of Deep Compression (Han et al. 2016, section 4).

A coded stream is one byte blob: code lengths as nibbles (the whole table a decoder needs, as in
DEFLATE), the bit offset of every CHUNK-th symbol, then the bit-packed codes (MSB first). The
offsets let a decoder run all chunks in lockstep with numpy instead of one symbol at a time.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

MAX_LEN = 15  # code lengths fit a nibble; the decode table has 2**15 entries at most
CHUNK = 4096
GAP_CANDIDATES = (3, 7, 15, 31, 63, 127, 255)
_ENCODE_BLOCK = 1 << 20


def symbol_counts(symbols: np.ndarray, alphabet: int | None = None) -> np.ndarray:
    symbols = np.asarray(symbols).reshape(-1).astype(np.int64)
    size = alphabet if alphabet is not None else (int(symbols.max()) + 1 if symbols.size else 0)
    return np.bincount(symbols, minlength=size).astype(np.int64)


def entropy_bits(counts: np.ndarray) -> float:
    """Total empirical (order-0) entropy in bits: n * H(p), p the observed symbol frequencies."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    return float(-(c * np.log2(c / c.sum())).sum()) + 0.0 if c.size > 1 else 0.0


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code length per symbol (0 = unused symbol), limited to `max_len` bits."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.int64)
    used = [int(s) for s in np.flatnonzero(counts)]
    if len(used) == 1:
        lengths[used[0]] = 1  # a lone symbol still needs one bit to be counted
    # Heap of (weight, tie-break, symbols below the node); merging adds a bit to all of them.
    heap = [(int(counts[s]), s, [s]) for s in used]
    heapq.heapify(heap)
    while len(heap) > 1:
        w1, t1, a = heapq.heappop(heap)
        w2, t2, b = heapq.heappop(heap)
        lengths[a] += 1
        lengths[b] += 1
        heapq.heappush(heap, (w1 + w2, min(t1, t2), a + b))
    if lengths.max(initial=0) > max_len:
        lengths = _limit_lengths(counts, lengths, max_len)
    return lengths.astype(np.uint8)


def _limit_lengths(counts: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """JPEG's length limiting (ITU T.81 Annex K.3): move leaves up keeping the Kraft sum at 1,
    then give the shortest codes back to the most frequent symbols."""
    bl = np.bincount(lengths[lengths > 0], minlength=int(lengths.max()) + 1).tolist()
    for i in range(len(bl) - 1, max_len, -1):
        while bl[i] > 0:
            j = i - 2
            while bl[j] == 0:
                j -= 1
            bl[i] -= 2
            bl[i - 1] += 1
            bl[j + 1] += 2
            bl[j] -= 1
    order = sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (-int(counts[s]), s))
    out = np.zeros_like(lengths)
    pos = 0
    for length in range(1, max_len + 1):
        for s in order[pos:pos + bl[length]]:
            out[s] = length
        pos += bl[length]
    return out


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes: symbols sorted by (length, symbol) get consecutive code values, shifted
    left whenever the length grows; the lengths alone therefore define the code."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = -1, 0
    for s in sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (lengths[s], s)):
        code = (code + 1) << (int(lengths[s]) - prev)
        codes[s] = code
        prev = int(lengths[s])
    return codes


def coded_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    return int((np.asarray(counts, np.int64) * np.asarray(lengths, np.int64)).sum())


def _pack_nibbles(lengths: np.ndarray) -> np.ndarray:
    padded = np.zeros(len(lengths) + len(lengths) % 2, dtype=np.uint8)
    padded[:len(lengths)] = lengths
    return (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8)


def encode_bits(symbols: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Bit-pack `symbols`; returns (payload bytes, bit offset of each symbol block, total bits)."""
    codes = canonical_codes(lengths)
    lens = np.asarray(lengths, dtype=np.int64)[symbols]
    starts = np.concatenate([[0], np.cumsum(lens)])
    packed, carry = [], np.zeros(0, dtype=np.uint8)
    for lo in range(0, len(symbols), _ENCODE_BLOCK):  # bounded temporaries on big tensors
        ln, cd = lens[lo:lo + _ENCODE_BLOCK], codes[symbols[lo:lo + _ENCODE_BLOCK]]
        st = starts[lo:lo + len(ln)] - starts[lo] + len(carry)
        bits = np.zeros(len(carry) + int(ln.sum()), dtype=np.uint8)
        bits[:len(carry)] = carry
        for j in range(int(ln.max(initial=0))):
            sel = ln > j
            bits[st[sel] + j] = (cd[sel] >> (ln[sel] - 1 - j)) & 1
        whole = len(bits) // 8 * 8
        packed.append(np.packbits(bits[:whole]))
        carry = bits[whole:]
    packed.append(np.packbits(carry))
    return np.concatenate(packed), starts[CHUNK:-1:CHUNK], int(starts[-1])


def pack_stream(symbols: np.ndarray,
                alphabet: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Huffman-code an integer stream into one uint8 blob plus what a decoder needs to know."""
    symbols = np.asarray(symbols).reshape(-1).astype(np.int64)
    counts = symbol_counts(symbols, alphabet)
    lengths = code_lengths(counts)
    payload, offsets, total = encode_bits(symbols, lengths)
    if total >= 1 << 32:
        raise ValueError("huffman: a stream over 2**32 bits is not supported")
    blob = np.concatenate([_pack_nibbles(lengths), offsets.astype("<u4").view(np.uint8), payload])
    info = {"count": len(symbols), "alphabet": len(lengths), "payload_bits": total,
            "entropy_bits": round(entropy_bits(counts), 3)}
    return blob.astype(np.uint8), info


def unpack_stream(blob: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """Inverse of `pack_stream`; raises ValueError when the blob does not decode cleanly."""
    count, alphabet, total = int(info["count"]), int(info["alphabet"]), int(info["payload_bits"])
    blob = np.asarray(blob, dtype=np.uint8).reshape(-1)
    table_bytes = (alphabet + 1) // 2
    n_off = max(0, -(-count // CHUNK) - 1)
    if len(blob) != table_bytes + 4 * n_off + -(-total // 8):
        raise ValueError("huffman: stream size does not match its header")
    nib = blob[:table_bytes]
    lengths = np.stack([nib & 15, nib >> 4], axis=1).reshape(-1)[:alphabet].astype(np.int64)
    offsets = blob[table_bytes:table_bytes + 4 * n_off].view("<u4").astype(np.int64)
    payload = blob[table_bytes + 4 * n_off:]
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    width = int(lengths.max(initial=0))
    if width == 0 or (2.0 ** -lengths[lengths > 0]).sum() > 1.0:
        raise ValueError("huffman: code table is empty or not prefix-free")
    # Every `width`-bit window maps to the symbol whose code prefixes it, and that code's length.
    table_sym = np.zeros(1 << width, dtype=np.int64)
    table_len = np.zeros(1 << width, dtype=np.int64)
    codes = canonical_codes(lengths)
    for s in np.flatnonzero(lengths).tolist():
        lo = int(codes[s]) << (width - int(lengths[s]))
        hi = lo + (1 << (width - int(lengths[s])))
        table_sym[lo:hi], table_len[lo:hi] = s, lengths[s]
    data = np.concatenate([payload, np.zeros(4, np.uint8)])
    pos = np.concatenate([[0], offsets])
    steps = min(CHUNK, count)
    last_len = count - (len(pos) - 1) * CHUNK
    # Symbols of a byte alphabet decode into bytes: int64 would take 8x the codes at load.
    out = np.zeros((len(pos), steps), dtype=np.uint8 if alphabet <= 256 else np.int64)
    last_end = -1
    for step in range(steps):
        if step == last_len:
            last_end = int(pos[-1])
        byte = np.minimum(pos >> 3, len(data) - 3)
        window = ((data[byte].astype(np.int64) << 16) | (data[byte + 1].astype(np.int64) << 8)
                  | data[byte + 2])
        window = (window >> (24 - width - (pos & 7))) & ((1 << width) - 1)
        out[:, step] = table_sym[window]
        pos = pos + table_len[window]
    if last_end < 0:
        last_end = int(pos[-1])
    if not (np.array_equal(pos[:-1], offsets) and last_end == total):
        raise ValueError("huffman: coded bits do not decode to the recorded symbol count")
    return out.reshape(-1)[:count]


def gap_streams(codes: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Deep Compression's relative indexing: the non-zero codes, and before each the number of
    zeros skipped since the previous one; a skip of `max_gap` or more emits filler symbols
    `max_gap` (each skips `max_gap` zeros and carries no value)."""
    flat = np.asarray(codes).reshape(-1)
    pos = np.flatnonzero(flat)
    skip = np.diff(pos, prepend=-1) - 1
    fillers = skip // max_gap
    rest = skip - fillers * max_gap
    # Symbol layout: for non-zero i, fillers[i] copies of max_gap, then rest[i].
    per = fillers + 1
    gaps = np.full(int(per.sum()), max_gap, dtype=np.int64)
    gaps[np.cumsum(per) - 1] = rest
    return flat[pos], gaps


def positions_from_gaps(gaps: np.ndarray, max_gap: int) -> np.ndarray:
    """Inverse of the gap half of `gap_streams`: flat positions of the non-zero values."""
    gaps = np.asarray(gaps, dtype=np.int64)
    is_value = gaps != max_gap
    positions: np.ndarray = (np.cumsum(np.where(is_value, gaps + 1, max_gap)) - 1)[is_value]
    return positions


def stream_cost_bits(symbols: np.ndarray, alphabet: int | None = None) -> int:
    """Estimated blob size in bits (table + offsets + payload) without packing anything."""
    counts = symbol_counts(symbols, alphabet)
    n_off = max(0, -(-int(counts.sum()) // CHUNK) - 1)
    return coded_bits(counts, code_lengths(counts)) + 4 * len(counts) + 32 * n_off


def best_max_gap(codes: np.ndarray) -> int:
    """The filler threshold (from GAP_CANDIDATES) that minimises the coded gap stream."""
    costs = {m: stream_cost_bits(gap_streams(codes, m)[1], m + 1) for m in GAP_CANDIDATES}
    return min(costs, key=costs.__getitem__)


def choose_form(symbols: np.ndarray) -> tuple[str, int | None, int]:
    """The cheaper coded form of a symbol stream where 0 means "zero weight": (form, filler
    threshold, estimated bytes). "huffman" codes every symbol; "huffman_sparse" codes the
    non-zero symbols and the gaps between them (Deep Compression's relative indices)."""
    symbols = np.asarray(symbols).reshape(-1).astype(np.int64)
    forms: dict[str, tuple[int | None, int]] = {"huffman": (None, stream_cost_bits(symbols))}
    # Each non-zero costs at least a bit in each of two streams, so with under 10% zeros the
    # sparse form cannot win; skipping it saves time on dense INT8 weights.
    if 10 * (len(symbols) - np.count_nonzero(symbols)) >= len(symbols):
        max_gap = best_max_gap(symbols)
        values, gaps = gap_streams(symbols, max_gap)
        forms["huffman_sparse"] = (max_gap, stream_cost_bits(values)
                                   + stream_cost_bits(gaps, max_gap + 1))
    form = min(forms, key=lambda k: forms[k][1])
    return form, forms[form][0], -(-forms[form][1] // 8)


def encode_form(symbols: np.ndarray, form: str,
                max_gap: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """One blob holding the form's streams back to back, and the JSON-ready description a
    decoder needs (per stream: count, alphabet, bytes, payload bits, entropy bits)."""
    symbols = np.asarray(symbols).reshape(-1).astype(np.int64)
    if form == "huffman":
        streams = {"symbols": pack_stream(symbols)}
    elif form == "huffman_sparse" and max_gap is not None:
        values, gaps = gap_streams(symbols, max_gap)
        streams = {"values": pack_stream(values), "gaps": pack_stream(gaps, max_gap + 1)}
    else:
        raise ValueError(f"huffman: unknown form {form!r} (max_gap={max_gap!r})")
    blob = np.concatenate([b for b, _ in streams.values()])
    meta: dict[str, Any] = {"streams": {k: {**info, "bytes": len(b)}
                                        for k, (b, info) in streams.items()}}
    if max_gap is not None:
        meta["max_gap"] = max_gap
    n = max(len(symbols), 1)
    payload = sum(info["payload_bits"] for _, info in streams.values())
    entropy = sum(info["entropy_bits"] for _, info in streams.values())
    meta["bits_per_weight"] = round(8 * len(blob) / n, 4)
    meta["entropy_bits_per_weight"] = round(entropy / n, 4)
    meta["entropy_gap_pct"] = round(100 * (payload / entropy - 1), 3) if entropy else 0.0
    return blob.astype(np.uint8), meta


def decode_form(blob: np.ndarray, form: str, meta: dict[str, Any], numel: int) -> np.ndarray:
    """Inverse of `encode_form`: the `numel` symbols; ValueError if the streams are inconsistent."""
    data = np.asarray(blob, dtype=np.uint8).reshape(-1)
    decoded, start = {}, 0
    for key, info in meta["streams"].items():
        end = start + int(info["bytes"])
        decoded[key] = unpack_stream(data[start:end], info)
        start = end
    if start != len(data):
        raise ValueError("huffman: stream sizes do not add up to the stored bytes")
    if form == "huffman":
        flat = decoded["symbols"]
    elif form == "huffman_sparse":
        positions = positions_from_gaps(decoded["gaps"], int(meta["max_gap"]))
        if len(positions) != len(decoded["values"]) or (len(positions)
                                                        and positions[-1] >= numel):
            raise ValueError("huffman: gap and value streams disagree")
        flat = np.zeros(numel, dtype=decoded["values"].dtype)
        flat[positions] = decoded["values"]
    else:
        raise ValueError(f"huffman: unknown form {form!r}")
    if len(flat) != numel:
        raise ValueError(f"huffman: decoded {len(flat)} symbols, expected {numel}")
    return flat
