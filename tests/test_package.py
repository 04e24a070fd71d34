"""Package-level promises: a lean import, the shipped recipe equals the demo's embedded plan."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import slimkit
from slimkit.tasks.ctr.demo_plan import DEMO_PLAN_YAML

ROOT = Path(__file__).resolve().parents[1]


def test_import_pulls_no_optional_dependency() -> None:
    code = ("import sys, slimkit; print(','.join(m for m in ('pandas', 'pyarrow', 'matplotlib', "
            "'rich', 'yaml_extras', 'transformers', 'onnx', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_recipe_file_matches_embedded_demo_plan() -> None:
    shipped = slimkit.Plan.load(ROOT / "recipes" / "demo.yaml")
    assert shipped == slimkit.Plan.from_yaml(DEMO_PLAN_YAML)


def test_recipe_file_matches_embedded_encoder_plan() -> None:
    from slimkit.tasks.text.defaults import MINILM_PLAN_YAML

    shipped = slimkit.Plan.load(ROOT / "recipes" / "minilm.yaml")
    assert shipped == slimkit.Plan.from_yaml(MINILM_PLAN_YAML)


def test_every_task_default_space_and_plan_load() -> None:
    pytest.importorskip("optuna")
    import yaml

    from slimkit.search import SearchSpace
    from slimkit.tasks.ctr.search_space import CTR_SPACE_YAML
    from slimkit.tasks.text.defaults import ENCODER_SPACE_YAML
    from slimkit.tasks.vision.defaults import CNN_PLAN_YAML, CNN_SPACE_YAML

    for space in (CTR_SPACE_YAML, ENCODER_SPACE_YAML, CNN_SPACE_YAML):
        assert SearchSpace.from_dict(yaml.safe_load(space)).slots
    assert slimkit.Plan.from_yaml(CNN_PLAN_YAML).steps


def test_public_api_is_explicit() -> None:
    for name in slimkit.__all__:
        assert hasattr(slimkit, name), name


def test_every_shipped_recipe_loads() -> None:
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        if path.name.startswith("search-"):  # search spaces, not plans
            continue
        assert slimkit.Plan.load(path).steps, path.name


def test_search_space_file_matches_embedded_default() -> None:
    pytest.importorskip("optuna")
    import yaml

    from slimkit.search import SearchSpace
    from slimkit.tasks.ctr.search_space import CTR_SPACE_YAML

    shipped = SearchSpace.load(ROOT / "recipes" / "search-ctr.yaml")
    assert shipped == SearchSpace.from_dict(yaml.safe_load(CTR_SPACE_YAML))


@pytest.mark.parametrize(("target", "installs_browser"), [("demo", False), ("test", True)])
def test_make_targets_install_what_they_need(target: str, installs_browser: bool) -> None:
    """`make demo` on a fresh machine installs no browser (only the report tests drive one)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert ("chromium" in dry) is installs_browser
    assert "torch==2.13.0" in dry and (",dev," in dry) is installs_browser  # linters, pytest
