"""Canonical Huffman coding and Deep Compression gap streams: round trips, code properties,
closeness to the empirical entropy."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.nn.huffman import (
    CHUNK,
    MAX_LEN,
    canonical_codes,
    code_lengths,
    coded_bits,
    entropy_bits,
    gap_streams,
    pack_stream,
    positions_from_gaps,
    symbol_counts,
    unpack_stream,
)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("n", [0, 1, 7, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
@pytest.mark.parametrize("kind", ["uniform", "skewed", "single"])
def test_round_trip(n: int, kind: str) -> None:
    if kind == "uniform":
        symbols = RNG.integers(0, 256, n)
    elif kind == "skewed":
        symbols = np.minimum(RNG.geometric(0.3, n), 40)
    else:
        symbols = np.full(n, 9)
    blob, info = pack_stream(symbols)
    assert blob.dtype == np.uint8
    assert np.array_equal(unpack_stream(blob, info), symbols)


def test_canonical_code_is_prefix_free_and_complete() -> None:
    counts = symbol_counts(np.minimum(RNG.geometric(0.2, 5000), 30))
    lengths = code_lengths(counts)
    codes = canonical_codes(lengths)
    used = np.flatnonzero(lengths)
    assert sum(2.0 ** -int(lengths[s]) for s in used) == 1.0  # Kraft equality: a full tree
    words = {format(int(codes[s]), f"0{int(lengths[s])}b") for s in used}
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    # Canonical: ordered by (length, symbol), codes of one length are consecutive integers.
    order = sorted(used, key=lambda s: (lengths[s], s))
    for a, b in zip(order, order[1:], strict=False):
        if lengths[a] == lengths[b]:
            assert codes[b] == codes[a] + 1
    assert np.all(lengths[counts == 0] == 0)


def test_lengths_are_limited_for_a_fibonacci_distribution() -> None:
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib, dtype=np.int64)
    lengths = code_lengths(counts)
    assert lengths.max() == MAX_LEN  # unlimited Huffman would need 29 bits here
    assert sum(2.0 ** -int(x) for x in lengths) <= 1.0
    assert np.all(np.diff(lengths[np.argsort(-counts, kind="stable")].astype(int)) >= 0)
    symbols = np.repeat(np.arange(30), np.minimum(counts, 50))
    blob, info = pack_stream(symbols)
    assert np.array_equal(unpack_stream(blob, info), symbols)


def test_coded_length_within_one_bit_per_symbol_of_entropy() -> None:
    for p in (0.05, 0.3, 0.7):
        symbols = np.minimum(RNG.geometric(p, 20_000), 60)
        counts = symbol_counts(symbols)
        bits = coded_bits(counts, code_lengths(counts))
        h = entropy_bits(counts)
        assert h <= bits < h + len(symbols)


def test_large_skewed_stream_within_two_percent_of_entropy() -> None:
    symbols = np.minimum(RNG.geometric(0.03, 500_000), 300)
    blob, info = pack_stream(symbols)
    assert info["payload_bits"] <= 1.02 * info["entropy_bits"]
    assert len(blob) * 8 <= 1.03 * info["entropy_bits"]  # with the table and chunk offsets
    assert np.array_equal(unpack_stream(blob, info), symbols)


def test_corrupted_stream_raises() -> None:
    symbols = RNG.integers(0, 5, 10_000)
    blob, info = pack_stream(symbols)
    with pytest.raises(ValueError):
        unpack_stream(blob[:-1], info)
    with pytest.raises(ValueError):
        unpack_stream(blob, {**info, "count": info["count"] - 1})


@pytest.mark.parametrize("max_gap", [3, 15, 255])
def test_gap_streams_round_trip_with_long_gaps(max_gap: int) -> None:
    codes = np.zeros(5000, dtype=np.int64)
    where = [0, 1, 3, 3 + max_gap, 4 + 3 * max_gap, 4000, 4998]  # gaps of 0 to > 3 * max_gap
    codes[where] = np.arange(1, len(where) + 1)
    values, gaps = gap_streams(codes, max_gap)
    assert np.array_equal(values, np.arange(1, len(where) + 1))
    assert int((gaps == max_gap).sum()) >= 3  # fillers were needed
    assert np.all(gaps <= max_gap)
    positions = positions_from_gaps(gaps, max_gap)
    assert np.array_equal(positions, where)


def test_gap_streams_of_all_zeros_and_leading_zeros() -> None:
    values, gaps = gap_streams(np.zeros(100, dtype=np.int64), 7)
    assert values.size == 0 and gaps.size == 0
    codes = np.zeros(40, dtype=np.int64)
    codes[-1] = 3
    values, gaps = gap_streams(codes, 7)
    assert list(gaps) == [7] * 5 + [4] and list(positions_from_gaps(gaps, 7)) == [39]
