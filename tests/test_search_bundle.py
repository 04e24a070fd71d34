"""Search bundles: the standalone search.py (numpy only) returns slimkit's results for every index
kind and option, the bundle's manifest and hashes, its refusals, and text search end to end with a
tiny exported encoder, in process and as `python search.py`."""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from encoder_fixtures import tiny_encoder_folder
from torch.nn import functional as F

from slimkit.index import (
    BinaryIndex,
    FlatIndex,
    Int8Index,
    PQIndex,
    save_index,
    write_search_bundle,
)

N, D, Q, K = 300, 32, 20, 10
STANDALONE = Path(__file__).resolve().parents[1] / "src" / "slimkit" / "index" / "standalone.py"


def _unit(n: int, seed: int) -> torch.Tensor:
    # Independent directions: no two items share their 32 sign bits, so only Hamming scores tie.
    return F.normalize(torch.randn(n, D, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return _unit(N, 0), _unit(Q, 1)


_loaded = itertools.count()


def load_search(folder: Path, *, item_chunk: int | None = 64,
                query_chunk: int | None = 8) -> ModuleType:
    """The bundle's search.py imported by path; small chunks exercise the running top k."""
    spec = importlib.util.spec_from_file_location(f"bundle_search_{next(_loaded)}",
                                                  folder / "search.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if item_chunk is not None:
        vars(module)["ITEM_CHUNK"] = item_chunk
    if query_chunk is not None:
        vars(module)["QUERY_CHUNK"] = query_chunk
    return module


def _binary(center: bool, query: str, rescore: str) -> Callable[[torch.Tensor], Any]:
    # Hamming scores tie: rescore every item (multiplier * K = N) so the candidates are certain.
    def build(x: torch.Tensor) -> BinaryIndex:
        return BinaryIndex.build(x, center=center, query=query,  # type: ignore[arg-type]
                                 rescore=rescore,  # type: ignore[arg-type]
                                 multiplier=N // K if query == "bits" else 3)
    return build


BUILDS: dict[str, Callable[[torch.Tensor], Any]] = {
    "flat": FlatIndex.build,
    "int8-dim": lambda x: Int8Index.build(x, per="dim"),
    "int8-vector": lambda x: Int8Index.build(x, per="vector"),
    "pq": lambda x: PQIndex.build(x, m=8, nbits=4, iters=5),
}
for _center, _query, _rescore in itertools.product(
        (True, False), ("bits", "float"), ("none", "binary", "int8", "float")):
    BUILDS[f"binary-{'centred' if _center else 'plain'}-{_query}-{_rescore}"] = \
        _binary(_center, _query, _rescore)


@pytest.mark.parametrize("case", list(BUILDS))
def test_standalone_search_matches_slimkit(data, tmp_path: Path, case: str) -> None:
    items, queries = data
    index = BUILDS[case](items)
    folder = write_search_bundle(tmp_path / "bundle", index)
    search = load_search(folder)
    standalone = search.load_index(folder / "index.safetensors")
    assert (len(standalone), standalone.dim, standalone.kind) == (N, D, index.kind)
    for q in (queries, queries[:3]):  # PQ scores many queries by a sparse matmul, few by gathers
        ref_scores, ref_ids = index.search(q, K)
        scores, ids = standalone.search(q.numpy(), K)
        assert scores.dtype == np.float32 and ids.dtype == np.int64
        assert scores.shape == ids.shape == (len(q), K)
        np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-4)
        if case.endswith("bits-none"):  # Hamming ties: torch.topk orders them arbitrarily
            first = index.first_pass(q).numpy()
            np.testing.assert_array_equal(np.take_along_axis(first, ids, 1), scores)
            tied = scores[:, 1:] == scores[:, :-1]
            assert bool((ids[:, 1:] > ids[:, :-1])[tied].all())  # lower ids first
        else:
            np.testing.assert_array_equal(ids, ref_ids.numpy())
    bundle = search.Bundle(folder)
    np.testing.assert_array_equal(bundle.search(queries.numpy(), K)[1],
                                  standalone.search(queries.numpy(), K)[1])


def test_search_py_imports_only_numpy_and_the_standard_library() -> None:
    tree = ast.parse(STANDALONE.read_text())
    top = {a.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
           for a in node.names}
    top |= {(node.module or "").split(".")[0] for node in tree.body
            if isinstance(node, ast.ImportFrom)}
    assert top - set(sys.stdlib_module_names) == {"numpy"}
    anywhere = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for a in node.names}
    anywhere |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert anywhere - set(sys.stdlib_module_names) == {"numpy", "onnxruntime", "tokenizers"}
    assert all(node.level == 0 for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))


def test_binary_candidates_with_tied_hamming_scores(data, tmp_path: Path) -> None:
    """With k * multiplier < items the candidates are a top of tied Hamming scores: any valid
    choice, each hit rescored exactly."""
    items, queries = data
    index = BinaryIndex.build(items, center=True, query="bits", rescore="float", multiplier=4)
    search = load_search(write_search_bundle(tmp_path / "b", index))
    scores, ids = search.load_index(tmp_path / "b" / "index.safetensors").search(
        queries.numpy(), K)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries.numpy(),
                                                 items.numpy()[ids]), atol=1e-5)
    first = index.first_pass(queries).numpy()
    cutoff = -np.sort(-first, axis=1)[:, K * 4 - 1:K * 4]
    assert bool((np.take_along_axis(first, ids, 1) >= cutoff).all())
    ref = index.search(queries, K)[1].numpy()
    overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, ref, strict=True)])
    assert overlap > 0.8


def test_manifest_hashes_and_tampering(data, tmp_path: Path) -> None:
    items, _ = data
    index = BinaryIndex.build(items, rescore="int8")
    texts = [f"document {i}" for i in range(N)]
    folder = write_search_bundle(tmp_path / "b", index, texts=texts, check={"recall@10": 0.97})
    manifest = json.loads((folder / "bundle.json").read_text())
    assert manifest["format"] == 1 and manifest["kind"] == "binary"
    assert (manifest["items"], manifest["dim"], manifest["config"]) == (N, D, index.config())
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    assert manifest["bytes"] == {"scanned": index.search_bytes, "stored": index.nbytes,
                                 "files": sum(p.stat().st_size for p in files)}
    assert manifest["check"] == {"recall@10": 0.97}
    assert set(manifest["files"]) == {"index.safetensors", "search.py", "texts.jsonl"}
    assert (folder / "search.py").read_bytes() == STANDALONE.read_bytes()
    assert "search" in manifest["usage"] and "\n" not in manifest["usage"]
    search = load_search(folder)
    bundle = search.Bundle(folder)
    bundle.verify()
    assert bundle.text(7) == "document 7" and bundle.text(N - 1) == f"document {N - 1}"
    assert not list(tmp_path.glob(".*"))  # no temporary folder left beside it
    path = folder / "index.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="index.safetensors"):
        search.Bundle(folder).verify()


def test_refusals(data, tmp_path: Path) -> None:
    items, _ = data
    index = FlatIndex.build(items[:20])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "old.txt").write_text("keep")
    with pytest.raises(ValueError, match="taken"):
        write_search_bundle(tmp_path / "taken", index)
    assert (tmp_path / "taken" / "old.txt").read_text() == "keep"
    write_search_bundle(tmp_path / "taken", index, force=True)
    assert not (tmp_path / "taken" / "old.txt").exists()
    assert (tmp_path / "taken" / "bundle.json").is_file()
    (tmp_path / "empty").mkdir()
    write_search_bundle(tmp_path / "empty", index)  # an empty folder is filled
    with pytest.raises(ValueError, match="texts"):
        write_search_bundle(tmp_path / "t", index, texts=["one", "two"])
    with pytest.raises(ValueError, match="encoder"):
        write_search_bundle(tmp_path / "e", index, encoder=tmp_path / "empty")
    assert not (tmp_path / "t").exists() and not (tmp_path / "e").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unknown_format_or_kind_is_refused(data, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    search = load_search(write_search_bundle(tmp_path / "b", FlatIndex.build(data[0])))
    for field, record in (("format", {"format": 2, "kind": "flat"}),
                          ("kind", {"format": 1, "kind": "hnsw"})):
        path = tmp_path / f"{field}.safetensors"
        save_file({"vectors": data[0]}, str(path), metadata={"slimkit_index": json.dumps(
            {**record, "config": {}, "items": N, "dim": D})})
        with pytest.raises(ValueError, match=f"{field}.safetensors.*{field}") as info:
            search.load_index(path)
        assert "\n" not in str(info.value)
    save_index(FlatIndex.build(data[0]), tmp_path / "ok.safetensors")
    assert len(search.load_index(tmp_path / "ok.safetensors")) == N


def test_main_refuses_bad_input(data, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    search = load_search(write_search_bundle(tmp_path / "b", FlatIndex.build(data[0])))
    for argv, says in ((["--bundle", str(tmp_path / "b"), "-k", "0", "q"], "-k"),
                       (["--bundle", str(tmp_path), "q"], "bundle.json"),
                       (["--bundle", str(tmp_path / "b"), "q"], "encoder"),
                       (["--bundle", str(tmp_path / "b"), "-k", "x", "q"], "-k")):
        assert search.main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err


# ---------------------------------------------------------------------------------------------
# Text search with a tiny exported encoder

TEXTS = [f"{a} {b} review number {i}" for i, (a, b) in enumerate(itertools.product(
    ("The dress", "These shoes", "My jacket", "A blue scarf", "The red hat"),
    ("fits well", "runs small", "feels soft", "broke quickly", "looks great",
     "arrived late", "is too long", "smells odd")))]  # 40: two batches of 32


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    from slimkit.export.encoder_onnx import OrtEncoder

    root = tmp_path_factory.mktemp("text")
    tiny_encoder_folder(root / "enc")
    embeddings = OrtEncoder(root / "enc", threads=1).embed(TEXTS).numpy()
    index = BinaryIndex.build(torch.from_numpy(embeddings), rescore="float")
    folder = write_search_bundle(root / "bundle", index, encoder=root / "enc", texts=TEXTS)
    return folder, embeddings


def test_standalone_encoder_matches_ort_encoder(text_bundle) -> None:
    folder, embeddings = text_bundle
    bundle = load_search(folder, item_chunk=None, query_chunk=None).Bundle(folder, threads=1)
    bundle.verify()
    got = bundle.encoder.embed(TEXTS)
    assert got.dtype == np.float32 and got.shape == embeddings.shape
    np.testing.assert_allclose(got, embeddings, atol=1e-5)
    hits = bundle.search_texts([TEXTS[5], TEXTS[33]], 3)
    assert [h[0]["id"] for h in hits] == [5, 33]
    assert hits[0][0]["text"] == TEXTS[5] and len(hits[0]) == 3


def test_search_py_runs_as_a_script(text_bundle) -> None:
    folder, _ = text_bundle
    run = subprocess.run([sys.executable, str(folder / "search.py"), "--json", "-k", "3",
                          "--threads", "1", "--verify", TEXTS[12], TEXTS[0]],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    tops = [r["hits"][0] for r in out["results"]]
    assert [t["id"] for t in tops] == [12, 0] and tops[0]["text"] == TEXTS[12]
    assert tops[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [len(r["hits"]) for r in out["results"]] == [3, 3]
    plain = subprocess.run([sys.executable, str(folder / "search.py"), "-k", "2", "--threads",
                            "1", TEXTS[12]], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert "id 12" in plain.stdout.splitlines()[1] and TEXTS[12] in plain.stdout
