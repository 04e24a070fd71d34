"""A model class slimkit has never seen, defined here: it round-trips through save/load into a
fresh instance, is refused by name until the caller allows it, and its surgery and swaps replay
onto the caller's instance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import module_types


class TwoTower(nn.Module):
    """Needs constructor arguments, so `load` cannot build it from its name alone."""

    def __init__(self, users: int, items: int, dim: int) -> None:
        super().__init__()
        self.user = nn.Embedding(users, dim)
        self.item = nn.Embedding(items, dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.user(user), self.item(item)], 1)).squeeze(1)


class NoArgs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


INPUTS = (torch.randint(0, 50, (16,)), torch.randint(0, 80, (16,)))


def _compressed() -> TwoTower:
    torch.manual_seed(0)
    model = TwoTower(50, 80, 8).eval()
    plan = slimkit.Plan(steps=(slimkit.Magnitude(sparsity=0.5), slimkit.DynamicInt8(),
                               slimkit.EmbeddingQuant(bits=4)))
    slimkit.compress_(model, plan, slimkit.Context())
    return model


def test_user_class_round_trips_into_a_fresh_instance(tmp_path) -> None:
    model = _compressed()
    path = slimkit.save(model, tmp_path / "m")
    loaded = slimkit.load(path, model=TwoTower(50, 80, 8)).model
    assert type(loaded.mlp[0]).__name__ == "DynamicInt8Linear"  # swaps replayed onto it
    with torch.inference_mode():
        assert torch.equal(loaded(*INPUTS), model(*INPUTS))


def test_unregistered_class_is_refused_naming_it_and_the_fix(tmp_path) -> None:
    path = slimkit.save(NoArgs(), tmp_path / "m")  # saving allows nothing
    with pytest.raises(slimkit.ArtifactError) as err:
        slimkit.load(path)
    message = str(err.value)
    assert "NoArgs" in message and "register_module_type(NoArgs)" in message
    assert "load(path, model=NoArgs(...))" in message and "\n" not in message
    slimkit.register_module_type(NoArgs)  # the caller allows it: loads by name
    assert isinstance(slimkit.load(path).model, NoArgs)


def test_saving_again_after_the_class_is_redefined(tmp_path) -> None:
    """A notebook re-runs the cell that defines the class: saving never trips on a name."""
    first = type("Cell", (NoArgs,), {})
    second = type("Cell", (NoArgs,), {})
    slimkit.save(first(), tmp_path / "a")
    slimkit.save(second(), tmp_path / "b")


def test_torch_model_without_spec_loads_into_an_instance(tmp_path) -> None:
    """An nn.Sequential of the caller's: its layers are not in its constructor's arguments."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1)).eval()
    slimkit.compress_(model, slimkit.Plan(steps=(slimkit.Magnitude(sparsity=0.5),
                                                 slimkit.DynamicInt8())), slimkit.Context())
    path = slimkit.save(model, tmp_path / "m")
    with pytest.raises(slimkit.ArtifactError, match=r"saved from an instance of Sequential.*"
                       r"model=Sequential\(\.\.\.\)"):
        slimkit.load(path)
    fresh = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(4, 6)
    with torch.inference_mode():
        assert torch.equal(slimkit.load(path, model=fresh).model(x), model(x))


def test_class_needing_arguments_says_to_pass_an_instance(tmp_path) -> None:
    path = slimkit.save(_compressed(), tmp_path / "m")
    slimkit.register_module_type(TwoTower)  # allowed, but its arguments are unknown
    with pytest.raises(slimkit.ArtifactError, match=r"cannot build .*TwoTower.*model=TwoTower"):
        slimkit.load(path)


def test_registry_refuses_non_modules_and_taken_names() -> None:
    with pytest.raises(slimkit.SlimkitError, match="nn.Module subclass"):
        slimkit.register_module_type(int)  # type: ignore[arg-type]

    class Other(nn.Module):
        pass

    with pytest.raises(slimkit.SlimkitError, match="already taken"):
        slimkit.register_module_type(Other, name=module_types.type_name(nn.Linear))


def test_manifest_naming_an_arbitrary_callable_is_refused(tmp_path) -> None:
    import json

    from slimkit.export import artifact

    path = slimkit.save(NoArgs(), tmp_path / "m")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["model"]["builder"] = "os:system"
    with pytest.raises(slimkit.ArtifactError, match="'os:system' is not a registered module"):
        artifact.build_model(manifest)


def test_model_with_other_edits_is_refused(tmp_path) -> None:
    path = slimkit.save(_compressed(), tmp_path / "m")
    other = TwoTower(50, 80, 8)
    slimkit.compress_(other, slimkit.Plan(steps=(slimkit.Layers(container="mlp", indices=[2],
                                                               recover="none"),)),
                      slimkit.Context())
    with pytest.raises(slimkit.SlimkitError, match="does not start with"):
        slimkit.load(path, model=other)


def test_the_model_it_was_compressed_from_loads_it(tmp_path) -> None:
    """Stage artifacts reload into a copy of their baseline, replaying only the newer edits."""
    torch.manual_seed(0)
    base = TwoTower(50, 80, 8).eval()
    slimkit.compress_(base, slimkit.Plan(steps=(slimkit.Magnitude(sparsity=0.5),)),
                      slimkit.Context())
    import copy

    start = copy.deepcopy(base)
    slimkit.compress_(base, slimkit.Plan(steps=(slimkit.DynamicInt8(),)), slimkit.Context())
    path = slimkit.save(base, tmp_path / "m")
    with torch.inference_mode():
        assert torch.equal(slimkit.load(path, model=start).model(*INPUTS), base(*INPUTS))
