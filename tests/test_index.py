"""Item indexes: exact search against brute force, the bytes each stores, int8 / PQ scores equal
to their reconstructions' scores, rescoring helping binary search, k-means, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from slimkit.core.errors import SlimkitError
from slimkit.index import BinaryIndex, FlatIndex, Int8Index, PQIndex, load_index, save_index
from slimkit.index.binary import hamming, pack_signs, unpack_signs
from slimkit.index.kmeans import kmeans

N, D, Q = 600, 32, 40


def clustered(n: int, seed: int) -> torch.Tensor:
    """Normalised vectors around 20 centres: neighbours mean something, as with real towers."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(20, D, generator=torch.Generator().manual_seed(99))
    pick = torch.randint(0, 20, (n,), generator=gen)
    return F.normalize(centres[pick] + 0.6 * torch.randn(n, D, generator=gen), dim=1)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items, queries = clustered(N, 0), clustered(Q, 1)
    truth = torch.topk(queries @ items.T, 10, dim=1).indices
    return items, queries, truth


def recall(ids: torch.Tensor, truth: torch.Tensor) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b)
                          for a, b in zip(ids, truth, strict=True)]))


def test_flat_is_exact_and_honours_exclusions(data) -> None:
    items, queries, truth = data
    index = FlatIndex.build(items)
    scores, ids = index.search(queries, 10)
    assert recall(ids, truth) == 1.0
    assert torch.allclose(scores, (queries @ items.T).gather(1, ids))
    assert index.nbytes == N * D * 4
    exclude = torch.zeros(Q, N, dtype=torch.bool)
    exclude[torch.arange(Q), truth[:, 0]] = True
    _, ids = index.search(queries, 10, exclude=exclude)
    assert not bool((ids == truth[:, :1]).any())
    assert torch.equal(ids[:, :9], truth[:, 1:])
    with pytest.raises(ValueError, match="exclude"):
        index.search(queries, 10, exclude=exclude[:, 1:])
    with pytest.raises(ValueError, match="queries"):
        index.search(queries[:, 1:], 10)


@pytest.mark.parametrize("per", ["dim", "vector"])
def test_int8_bytes_scores_and_recall(data, per: str) -> None:
    items, queries, truth = data
    index = Int8Index.build(items, per=per)
    assert index.codes.dtype == torch.int8
    assert index.nbytes == N * D + (2 * D * 4 if per == "dim" else N * 4)
    # The folded scoring equals the dequantized vectors' inner products.
    assert torch.allclose(index.scores(queries), queries @ index.reconstruct().T, atol=1e-5)
    assert (index.reconstruct() - items).abs().max() < 0.01
    assert recall(index.search(queries, 10)[1], truth) >= 0.95


def test_binary_bits_hamming_and_rescoring(data) -> None:
    items, queries, truth = data
    x = torch.tensor([[1.0, -2, 3, -4, 5, 6, -7, 8, 9, -1]])
    bits = pack_signs(x)
    assert bits.tolist() == [[0b10101101, 0b10000000]]
    assert torch.equal(unpack_signs(bits, 10), torch.sign(x))
    assert hamming(bits, pack_signs(-x)).tolist() == [[10]]
    plain = BinaryIndex.build(items, center=False, query="bits")
    assert plain.nbytes == plain.search_bytes == N * D // 8
    signs = torch.sign(items)
    assert torch.equal(plain.search(queries, 5)[0],
                       torch.topk(torch.sign(queries) @ signs.T, 5, dim=1).values)
    r_plain = recall(plain.search(queries, 10)[1], truth)
    plain_kw = {"center": False, "query": "bits"}
    r_binary = recall(BinaryIndex.build(items, rescore="binary", **plain_kw)
                      .search(queries, 10)[1], truth)
    int8 = BinaryIndex.build(items, rescore="int8", multiplier=4, **plain_kw)
    assert int8.search_bytes == N * D // 8 and int8.nbytes == N * D // 8 + N * D + 2 * D * 4
    r_int8 = recall(int8.search(queries, 10)[1], truth)
    r_float = recall(BinaryIndex.build(items, rescore="float", **plain_kw)
                     .search(queries, 10)[1], truth)
    assert r_plain < r_binary < r_int8 <= r_float, (r_plain, r_binary, r_int8, r_float)
    assert r_float > 0.9


def shifted(n: int, seed: int) -> torch.Tensor:
    """Clustered vectors sharing one large common direction, as sentence embeddings do: most
    signs agree on every item, so plain sign bits say little."""
    common = F.normalize(torch.ones(D), dim=0)
    return F.normalize(clustered(n, seed) + 1.5 * common, dim=1)


def test_centred_bits_and_the_float_query_beat_plain_signs() -> None:
    items, queries = shifted(N, 0), shifted(Q, 1)
    truth = torch.topk(queries @ items.T, 10, dim=1).indices
    plain = BinaryIndex.build(items, center=False, query="bits")
    centred = BinaryIndex.build(items, query="bits")
    asym = BinaryIndex.build(items)
    assert asym.search_bytes == N * D // 8 + D * 4  # the bits and the centre
    mean = items.mean(0)
    assert torch.allclose(centred.center, mean)
    assert torch.equal(centred.bits, pack_signs(items - mean))
    # The float query's first pass is the centred query against the items' +-1 vectors.
    expect = torch.topk((queries - mean) @ torch.sign(items - mean).T, 5, dim=1).values
    assert torch.allclose(asym.search(queries, 5)[0], expect, atol=1e-5)
    r = [recall(ix.search(queries, 10)[1], truth) for ix in (plain, centred, asym)]
    assert r[0] < r[1] < r[2], r
    rescored = BinaryIndex.build(items, rescore="float", multiplier=8)
    assert recall(rescored.search(queries, 10)[1], truth) > max(r[2], 0.9)


def test_old_files_without_centre_search_as_plain_bits(data, tmp_path) -> None:
    items, queries, _ = data
    plain = BinaryIndex.build(items, center=False, query="bits")
    tensors, config = plain.tensors(), plain.config()
    del config["query"]  # as written before the float query existed
    back = BinaryIndex.from_tensors(tensors, config)
    assert back.query == "bits" and back.center is None
    assert torch.equal(back.search(queries, 10)[1], plain.search(queries, 10)[1])
    with pytest.raises(ValueError, match="query"):
        BinaryIndex(plain.bits, D, query="hamming")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="center"):
        BinaryIndex(plain.bits, D, center=torch.zeros(D + 1))


def test_binary_rescoring_never_returns_excluded_items(data) -> None:
    items, queries, _ = data
    index = BinaryIndex.build(items, rescore="float", multiplier=2)
    exclude = torch.ones(Q, N, dtype=torch.bool)
    exclude[:, :15] = False  # fewer unseen items than k * multiplier = 20
    scores, ids = index.search(queries, 10, exclude=exclude)
    assert bool((ids < 15).all()) and bool(torch.isfinite(scores).all())


def test_kmeans_finds_separated_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2, generator=gen)
    found = kmeans(x, 3, seed=0)
    assert torch.cdist(found, centres).min(1).values.max() < 0.1
    assert torch.equal(found, kmeans(x, 3, seed=0))
    with pytest.raises(ValueError, match="k:"):
        kmeans(x, 151)


def test_pq_adc_equals_reconstruction_and_beats_random(data) -> None:
    items, queries, truth = data
    index = PQIndex.build(items, m=8, nbits=8, iters=5)
    assert index.codes.shape == (N, 8) and index.codes.dtype == torch.uint8
    assert index.nbytes == N * 8 + 8 * 256 * (D // 8) * 4
    assert torch.allclose(index.scores(queries), queries @ index.reconstruct().T, atol=1e-5)
    assert torch.allclose(index.scores(queries[:3]), queries[:3] @ index.reconstruct().T,
                          atol=1e-5)  # few queries: the gather path, many: the sparse matmul
    r = recall(index.search(queries, 10)[1], truth)
    assert r > 0.5 > 10 / N, r  # random: 10 / N
    coarse, fine = (recall(PQIndex.build(items, m=m, nbits=4).search(queries, 10)[1], truth)
                    for m in (4, 16))
    assert coarse < fine, (coarse, fine)  # more sub-vectors: finer codes
    half = PQIndex.build(items, m=8, nbits=4, iters=5, codebook_dtype="float16")
    assert half.nbytes == N * 8 + 8 * 16 * (D // 8) * 2
    with pytest.raises(ValueError, match="m: expected a divisor"):
        PQIndex.build(items, m=5)


@pytest.mark.parametrize("make", [
    lambda x: FlatIndex.build(x), lambda x: Int8Index.build(x, per="dim"),
    lambda x: Int8Index.build(x, per="vector"), lambda x: BinaryIndex.build(x),
    lambda x: BinaryIndex.build(x, rescore="int8", multiplier=3),
    lambda x: BinaryIndex.build(x, rescore="float"),
    lambda x: BinaryIndex.build(x, center=False, query="bits"),
    lambda x: PQIndex.build(x, m=4, nbits=6, iters=5)])
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip(data, tmp_path, make, mmap: bool) -> None:
    items, queries, _ = data
    index = make(items)
    path = save_index(index, tmp_path / "index.safetensors")
    written = path.read_bytes()
    back = load_index(path, mmap=mmap)
    assert type(back) is type(index) and back.config() == index.config()
    assert back.nbytes == index.nbytes
    for a, b in zip(index.search(queries, 10), back.search(queries, 10), strict=True):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob("*.partial"))
    assert path.read_bytes() == written  # a mapped index never writes to its file


def test_mapped_tensors_are_views_of_the_file(data, tmp_path) -> None:
    from slimkit.index.io import mapped_tensors

    items, queries, _ = data
    index = BinaryIndex.build(items, rescore="float", multiplier=4)
    path = save_index(index, tmp_path / "index.safetensors")
    meta, tensors = mapped_tensors(path)
    assert "slimkit_index" in meta and set(tensors) == {"bits", "center", "float"}
    assert torch.equal(tensors["float"], items) and torch.equal(tensors["bits"], index.bits)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(SlimkitError, match="do not fit the file"):
        load_index(truncated, mmap=True)


def test_load_refuses_files_that_are_not_indexes(data, tmp_path) -> None:
    from safetensors.torch import save_file

    items, _, _ = data
    path = tmp_path / "x.safetensors"
    save_file({"vectors": items}, str(path))
    with pytest.raises(SlimkitError, match="no slimkit index record"):
        load_index(path)
    save_file({"vectors": items}, str(path), metadata={"slimkit_index": json.dumps(
        {"format": 1, "kind": "pickle", "config": {}, "items": N, "dim": D})})
    with pytest.raises(SlimkitError, match="kind 'pickle'"):
        load_index(path)
    save_file({"vectors": items}, str(path), metadata={"slimkit_index": json.dumps(
        {"format": 1, "kind": "flat", "config": {}, "items": N + 1, "dim": D})})
    with pytest.raises(SlimkitError, match="header says"):
        load_index(path)
    save_file({"codes": torch.zeros(3, 2, dtype=torch.uint8),
               "codebooks": torch.zeros(2, 4, 1)}, str(path), metadata={"slimkit_index":
               json.dumps({"format": 1, "kind": "pq", "config": {}, "items": 3, "dim": 2})})
    load_index(path)  # valid
    save_file({"codes": torch.full((3, 2), 9, dtype=torch.uint8),
               "codebooks": torch.zeros(2, 4, 1)}, str(path), metadata={"slimkit_index":
               json.dumps({"format": 1, "kind": "pq", "config": {}, "items": 3, "dim": 2})})
    with pytest.raises(SlimkitError, match="exceeds the 4 centroids"):
        load_index(path)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(SlimkitError, match="cannot read"):
        load_index(path)


def test_pq_is_close_to_faiss() -> None:
    faiss = pytest.importorskip("faiss")
    items, queries = clustered(2000, 0), clustered(Q, 1)
    truth = torch.topk(queries @ items.T, 10, dim=1).indices
    index = PQIndex.build(items, m=8, iters=20)
    ours = recall(index.search(queries, 10)[1], truth)
    ref = faiss.IndexPQ(D, 8, 8, faiss.METRIC_INNER_PRODUCT)
    ref.train(items.numpy())
    ref.add(items.numpy())
    _, ids = ref.search(queries.numpy(), 10)
    theirs = recall(torch.from_numpy(ids), truth)
    assert ours >= theirs - 0.05, (ours, theirs)  # 0.505 vs 0.515 when written
    theirs_rec = torch.from_numpy(ref.reconstruct_n(0, len(items)))
    error, ref_error = (float(((r - items) ** 2).sum(1).mean())
                        for r in (index.reconstruct(), theirs_rec))
    assert error <= 1.05 * ref_error, (error, ref_error)  # 0.0468 vs 0.0477 when written
