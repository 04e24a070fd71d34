"""Artifacts: exact round trips, sparse bytes, and refusal of corrupted or tampered files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import slimkit
from slimkit.export import MANIFEST, WEIGHTS, artifact_bytes
from slimkit.export.encoding import decode, encode, pack_bits, unpack_bits
from slimkit.graph import is_masked


def test_bitmap_encoding_round_trip_and_is_smaller() -> None:
    t = torch.randn(40, 30)
    t[t.abs() < 1.0] = 0
    parts, meta = encode("w", t)
    assert meta["encoding"] == "bitmap"
    assert sum(p.numel() * p.element_size() for p in parts.values()) < t.numel() * 4
    assert torch.equal(decode("w", meta, parts), t)
    mask = torch.rand(37) > 0.5
    assert torch.equal(unpack_bits(pack_bits(mask), 37), mask)


def test_dense_kept_when_sparse_would_be_larger() -> None:
    _, meta = encode("w", torch.randn(100))
    assert meta["encoding"] == "dense"


def _compressed(make_model, tiny_task):
    model = make_model()
    plan = slimkit.Plan(steps=(slimkit.Magnitude(sparsity=0.8), slimkit.Layers(
        container="tower", indices=(1,), recover="none"), slimkit.DynamicInt8(),
        slimkit.EmbeddingQuant(bits=4)))
    slimkit.compress_(model, plan, slimkit.Context(task=tiny_task))
    return model


def test_round_trip_gives_identical_outputs_and_metrics(tmp_path, make_model, tiny_task) -> None:
    model = _compressed(make_model, tiny_task)
    path = slimkit.save(model, tmp_path / "art", metrics={"test": tiny_task.evaluate(model)})
    loaded = slimkit.load(path)
    x = tiny_task.example_inputs(64)
    with torch.inference_mode():
        assert torch.equal(model(*x), loaded.model(*x))
    assert tiny_task.evaluate(loaded.model) == loaded.manifest["metrics"]["test"]
    assert not list(tmp_path.glob(".art*"))  # no temp dirs left behind


def test_compression_shrinks_the_artifact(tmp_path, tiny_task) -> None:
    def wide(_kind: str = "deepfm") -> torch.nn.Module:  # a tower that dominates the bytes
        torch.manual_seed(0)
        return tiny_task.build_model("deepfm", embed_dim=8, hidden=[128, 128, 128])

    base = artifact_bytes(slimkit.save(wide(), tmp_path / "base"))
    small = artifact_bytes(slimkit.save(_compressed(wide, tiny_task), tmp_path / "small"))
    assert small * 6 < base


def test_corrupted_weights_are_refused(tmp_path, make_model) -> None:
    path = slimkit.save(make_model(), tmp_path / "art")
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-5] ^= 0xFF
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(slimkit.ArtifactError, match="checksum"):
        slimkit.load(path)


def test_tampered_tensor_with_fixed_file_checksum_is_refused(tmp_path, make_model) -> None:
    import hashlib

    import safetensors.torch

    path = slimkit.save(make_model(), tmp_path / "art")
    with safetensors.safe_open(str(path / WEIGHTS), framework="pt") as fh:
        header = fh.metadata()
    tensors = safetensors.torch.load_file(str(path / WEIGHTS))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    safetensors.torch.save_file(tensors, str(path / WEIGHTS), metadata=header)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["weights_sha256"] = hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(slimkit.ArtifactError, match="fails its checksum"):
        slimkit.load(path)


@pytest.mark.parametrize("edit", [
    lambda m: m["model"].update(builder="os:system"),
    lambda m: m.update(format="other"),
    lambda m: m["edits"].append({"op": "swap", "path": "head", "module": "subprocess:Popen",
                                 "args": {}}),
    lambda m: m["metrics"].update(test={"auc": 0.99}),
    lambda m: m.pop("tensors"),
    lambda m: m["model"]["kwargs"].update(embed_dim=4),
])
def test_tampered_manifest_is_refused(tmp_path, make_model, edit) -> None:
    path = slimkit.save(make_model(), tmp_path / "art")
    manifest = json.loads((path / MANIFEST).read_text())
    edit(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(slimkit.ArtifactError):
        slimkit.load(path)


def test_missing_or_garbled_artifact(tmp_path, make_model) -> None:
    with pytest.raises(slimkit.ArtifactError, match="no manifest.json"):
        slimkit.load(tmp_path)
    path = slimkit.save(make_model(), tmp_path / "art")
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(slimkit.ArtifactError, match="not valid JSON"):
        slimkit.load(path)
    shutil.rmtree(path)


def test_pruned_zeros_survive_reload_without_masks(tmp_path, make_model, tiny_task) -> None:
    model = make_model()
    slimkit.compress_(model, slimkit.Plan(steps=(slimkit.Magnitude(sparsity=0.5),
                                                 slimkit.Layers(container="tower", indices=(1,),
                                                                recover="none"))),
                      slimkit.Context(task=tiny_task))
    loaded = slimkit.load(slimkit.save(model, tmp_path / "art")).model
    # The reloaded model holds no mask tensor (memory); its pruned layers are flagged, and any
    # later training rebuilds the masks from the zeros for its duration.
    assert not [m for m in loaded.modules() if hasattr(m, "weight_mask")]
    masked = [m for m in loaded.modules() if is_masked(m)]
    assert len(masked) == len([m for m in model.modules() if is_masked(m)]) > 0
    slimkit.compress_(loaded, slimkit.Plan(steps=(slimkit.Finetune(epochs=0.2, lr=1e-2),)),
                      slimkit.Context(task=tiny_task))
    for m in masked:
        assert int((m.weight == 0).sum()) >= m.weight.numel() // 2


@pytest.mark.parametrize("builder", ["slimkit.report:write_report", "slimkit.cli.main:main",
                                     "os:system", "torch.nn:functional"])
def test_builder_must_be_a_module_class(builder) -> None:
    from slimkit.export.artifact import build_model

    with pytest.raises(slimkit.ArtifactError):
        build_model({"model": {"builder": builder, "kwargs": {}}, "edits": []})


def test_artifact_is_readable_by_others(tmp_path, make_model) -> None:
    path = slimkit.save(make_model(), tmp_path / "art")
    assert path.stat().st_mode & 0o005 == 0o005  # with the usual umask 022
