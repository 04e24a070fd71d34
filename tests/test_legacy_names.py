"""Artifacts saved before the deployable layers moved to slimkit.nn name them by their old modules;
every such name must still resolve, and such an artifact must still load."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from torch import nn

import slimkit
from slimkit.core.compress import edit_log
from slimkit.core.module_types import module_type, type_name
from slimkit.graph import swap_module
from slimkit.nn.int8_linear import DynamicInt8Linear
from slimkit.nn.legacy_names import LEGACY_NAMES
from slimkit.nn.quantized_embedding import QuantizedEmbedding

# Written out, not derived from the table: dropping a row from the table must fail here.
OLD_TO_NEW = {
    "slimkit.methods.quantize.int8_linear:DynamicInt8Linear":
        "slimkit.nn.int8_linear:DynamicInt8Linear",
    "slimkit.methods.quantize.static_modules:StaticInt8Linear":
        "slimkit.nn.static_modules:StaticInt8Linear",
    "slimkit.methods.quantize.static_modules:StaticInt8Conv2d":
        "slimkit.nn.static_modules:StaticInt8Conv2d",
    "slimkit.methods.quantize.lowbit_linear:WeightOnlyLinear":
        "slimkit.nn.lowbit_linear:WeightOnlyLinear",
    "slimkit.methods.quantize.binary_linear:BinaryLinear": "slimkit.nn.binary_linear:BinaryLinear",
    "slimkit.methods.quantize.binary_linear:TernaryLinear":
        "slimkit.nn.binary_linear:TernaryLinear",
    "slimkit.methods.quantize.binary_linear:FakeSignLinear":
        "slimkit.nn.binary_linear:FakeSignLinear",
    "slimkit.methods.quantize.clustered_layer:ClusteredLayer":
        "slimkit.nn.clustered_layer:ClusteredLayer",
    "slimkit.methods.quantize.quantized_embedding:QuantizedEmbedding":
        "slimkit.nn.quantized_embedding:QuantizedEmbedding",
    "slimkit.methods.truncate.remapped_embedding:RemappedEmbedding":
        "slimkit.nn.remapped_embedding:RemappedEmbedding",
}


def test_every_old_name_resolves_to_the_moved_class() -> None:
    assert set(LEGACY_NAMES) == set(OLD_TO_NEW)
    for old, new in OLD_TO_NEW.items():
        cls = module_type(old)
        assert type_name(cls) == new and module_type(new) is cls


def test_old_names_resolve_in_a_process_that_imports_export_only() -> None:
    # What the memory probe's child and a bare `from slimkit.export import load` see.
    code = ("import sys; from slimkit.export import load; "
            "from slimkit.core.module_types import module_type; "
            "[module_type(n) for n in sys.argv[1:]]")
    subprocess.run([sys.executable, "-c", code, *OLD_TO_NEW], check=True, timeout=120)


def test_an_artifact_with_old_names_loads(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    table = QuantizedEmbedding.from_float(model[0], bits=4)
    swap_module(model, "0", table, table.spec())
    int8 = DynamicInt8Linear.from_linear(model[1])
    swap_module(model, "1", int8, int8.spec())
    # The edit log as a version before the move recorded it (save hashes the manifest with it).
    renamed = {new: old for old, new in OLD_TO_NEW.items()}
    for edit in edit_log(model):
        edit["module"] = renamed[edit["module"]]
    path = slimkit.save(model, tmp_path / "old")
    manifest = json.loads((path / "manifest.json").read_text())
    assert [e["module"] for e in manifest["edits"]] == [
        "slimkit.methods.quantize.quantized_embedding:QuantizedEmbedding",
        "slimkit.methods.quantize.int8_linear:DynamicInt8Linear"]
    loaded = slimkit.load(path).model
    ids = torch.tensor([[1, 2], [3, 9]])
    with torch.inference_mode():
        assert torch.equal(loaded(ids), model(ids))
    assert type(loaded[1]) is DynamicInt8Linear
