"""A tensor several state-dict names share (tied weights) is stored once: the manifest lists the
other names as aliases (`same_as`), `load` gives the group one tensor again on every path, a
tampered alias is refused, and artifacts written before aliases existed still load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

import slimkit
from slimkit.core.errors import ArtifactError
from slimkit.export import MANIFEST, WEIGHTS, artifact_bytes
from slimkit.export import artifact as artifact_module

VOCAB, DIM = 1000, 64


@slimkit.register_module_type
class TinyLM(nn.Module):
    """An input embedding and an output head, tied in the constructor unless `tie` is False."""

    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        if tie:
            self.head.weight = self.emb.weight
        self.slimkit_spec = {"builder": slimkit.core.module_types.type_name(TinyLM),
                             "kwargs": {"tie": tie}}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.emb(ids)))


def _model(tie: bool = True) -> TinyLM:
    torch.manual_seed(0)
    model = TinyLM(tie).eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)  # not the default ones, so a mix-up shows
    return model


IDS = torch.arange(0, VOCAB, 37).reshape(4, -1)


def test_tied_weight_is_stored_once_and_reloads_tied(tmp_path: Path) -> None:
    tied, untied = _model(), _model(tie=False)
    path = slimkit.save(tied, tmp_path / "tied")
    entry = json.loads((path / MANIFEST).read_text())["tensors"]["head.weight"]
    assert entry == {"same_as": "emb.weight", "shape": [VOCAB, DIM], "dtype": "float32"}
    table = VOCAB * DIM * 4
    untied_bytes = artifact_bytes(slimkit.save(untied, tmp_path / "untied"))
    assert untied_bytes > 2 * table  # both copies
    assert table < artifact_bytes(path) < untied_bytes / 2 + 8192  # one copy, plus metadata
    expected = tied(IDS)
    for loaded in (slimkit.load(path).model, slimkit.load(path, model=TinyLM()).model):
        assert loaded.head.weight is loaded.emb.weight
        assert torch.equal(loaded(IDS), expected)


def test_a_tie_made_after_construction_is_restored(tmp_path: Path) -> None:
    # The rebuilt model (tie=False) holds two tables; the artifact says they were one.
    model = _model(tie=False)
    model.head.weight = model.emb.weight
    path = slimkit.save(model, tmp_path / "late")
    by_name = slimkit.load(path).model
    into = slimkit.load(path, model=TinyLM(tie=False)).model  # the copy path: real tensors
    for loaded in (by_name, into):
        assert loaded.head.weight is loaded.emb.weight
        assert isinstance(loaded.head.weight, nn.Parameter)
        assert torch.equal(loaded(IDS), model(IDS))
    # Still one table: a change through one name shows through the other.
    with torch.no_grad():
        into.emb.weight[0, 0] = 7.0
    assert into.head.weight[0, 0] == 7.0


def test_artifact_without_aliases_still_loads(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    monkeypatch.setattr(artifact_module, "shared_names", lambda _model, _state: {})
    path = slimkit.save(model, tmp_path / "old")  # as before aliases: each name stored
    monkeypatch.undo()
    tensors = json.loads((path / MANIFEST).read_text())["tensors"]
    assert "sha256" in tensors["head.weight"] and "same_as" not in tensors["head.weight"]
    loaded = slimkit.load(path).model
    assert loaded.head.weight is loaded.emb.weight
    assert torch.equal(loaded(IDS), model(IDS))


def _forge(folder: Path, edit: Any) -> None:
    """Edit the manifest and re-seal it as a careful forger would: the weights header's manifest
    hash and the manifest's weights checksum both made to match again."""
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest["tensors"])
    manifest.pop("weights_sha256")
    tensors = safetensors.torch.load_file(str(folder / WEIGHTS))
    safetensors.torch.save_file(tensors, str(folder / WEIGHTS), metadata={
        artifact_module._MANIFEST_HASH: artifact_module._manifest_sha256(manifest)})
    manifest["weights_sha256"] = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _set(key: str, value: Any) -> Any:
    return lambda tensors: tensors["head.weight"].__setitem__(key, value)


TAMPER = {
    "alias of a missing name": _set("same_as", "emb.nothing"),
    "alias of itself": _set("same_as", "head.weight"),
    "alias of a tensor of another shape": _set("same_as", "norm.weight"),
    "alias recording another dtype": _set("dtype", "float16"),
    "alias recording another shape": _set("shape", [DIM, VOCAB]),
    "alias of an alias": lambda t: t.update({"norm.weight": {
        "same_as": "head.weight", "shape": [DIM], "dtype": "float32"}}),
    "alias not a string": _set("same_as", ["emb.weight"]),
}


def test_forged_manifest_without_edit_loads(tmp_path: Path) -> None:
    path = slimkit.save(_model(), tmp_path / "a")
    _forge(path, lambda _tensors: None)  # so each refusal below is the edit's
    assert slimkit.load(path).model.head.weight is not None


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_alias_is_refused(case: str, tmp_path: Path) -> None:
    path = slimkit.save(_model(), tmp_path / "a")
    _forge(path, TAMPER[case])
    with pytest.raises(ArtifactError) as err:
        slimkit.load(path)
    assert "\n" not in str(err.value)
    with pytest.raises(ArtifactError):
        slimkit.load(path, model=TinyLM())


def test_only_the_same_object_is_an_alias(tmp_path: Path) -> None:
    # Equal values in two tensors are two tensors: identity decides, not equality.
    model = _model(tie=False)
    with torch.no_grad():
        model.head.weight.copy_(model.emb.weight)
    path = slimkit.save(model, tmp_path / "equal")
    assert "same_as" not in json.loads((path / MANIFEST).read_text())["tensors"]["head.weight"]
    loaded = slimkit.load(path).model
    assert loaded.head.weight is not loaded.emb.weight
