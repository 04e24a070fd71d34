"""The layering contracts (pyproject.toml's [tool.importlinter], run by `make lint`) catch an import
that runs the wrong way: lint-imports runs on a copy of the package with one such import added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or \
    shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(
    LINT is None, reason="lint-imports is not installed (import-linter, in the `dev` extra)")

# (file added to the copy, its import, the contract that must break)
VIOLATIONS = [
    ("nn/_wrong.py", "from ..export import artifact", "Layers:"),
    # Allowed by the layers (methods sit above export), refused by the independence contract.
    ("methods/quantize/_wrong.py", "from ...export import artifact",
     "Methods and export are independent"),
    ("export/_wrong.py", "from ..methods import finetune", "Methods and export are independent"),
    ("search/_wrong.py", "from .. import pipeline", "Layers:"),
    ("core/_wrong.py", "import onnxruntime", "core, nn and graph import no optional"),
    ("methods/prune/_wrong.py", "from ..quantize import qat", "Method families:"),
    ("tasks/text/_wrong.py", "from ..ctr import models", "Task families:"),
]


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "src" / "slimkit", tmp_path / "src" / "slimkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    # The copy comes first on the path, so `slimkit` is the copy, not the installed package.
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    assert LINT is not None
    return subprocess.run([LINT, "--no-cache", "--no-logo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_contracts(tmp_path: Path) -> None:
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("path", "line", "contract"), VIOLATIONS)
def test_an_import_the_wrong_way_fails(tmp_path: Path, path: str, line: str,
                                       contract: str) -> None:
    root = _copy(tmp_path)
    (root / "src" / "slimkit" / path).write_text(f"{line}  # deliberate violation\n")
    result = _lint(root)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    module = "slimkit." + path.removesuffix(".py").replace("/", ".")
    assert contract in broken and module in broken, result.stdout
