"""No silent failures: every `except Exception` / `except BaseException` / bare `except:` in
src/ must re-raise, log at WARNING or above, or say on its `except` line (`# recorded: WHERE`)
where the reason is kept. Checked with `ast`, so strings and comments elsewhere cannot fool it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
BROAD = {"Exception", "BaseException"}
LOG_LEVELS = {"warning", "error", "exception", "critical"}
LOGGERS = {"log", "logger", "logging", "LOG", "LOGGER", "_log", "_logger"}
MARK = "# recorded:"


def _is_broad(handler: ast.ExceptHandler) -> bool:
    """Bare `except:`, or a type (or tuple of types) naming Exception / BaseException."""
    if handler.type is None:
        return True
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    names = {k.id if isinstance(k, ast.Name) else k.attr if isinstance(k, ast.Attribute) else ""
             for k in kinds}
    return bool(names & BROAD)


def _logs_loudly(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    owner = node.func.value
    return node.func.attr in LOG_LEVELS and isinstance(owner, ast.Name) and owner.id in LOGGERS


def _handled(handler: ast.ExceptHandler, lines: list[str]) -> bool:
    if MARK in lines[handler.lineno - 1]:
        return True
    return any(isinstance(n, ast.Raise) or _logs_loudly(n)
               for stmt in handler.body for n in ast.walk(stmt))


def silent_handlers(source: str, name: str = "<src>") -> list[str]:
    """`file:line: except ...` for each broad handler that neither raises nor records."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.ExceptHandler) and _is_broad(node) \
                and not _handled(node, lines):
            found.append(f"{name}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_no_silent_broad_except_in_src() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50  # the walk really found the package
    offenders = [hit for f in files
                 for hit in silent_handlers(f.read_text(), str(f.relative_to(SRC)))]
    assert offenders == [], "handlers that swallow errors:\n" + "\n".join(offenders)


@pytest.mark.parametrize(("body", "silent"), [
    ("try:\n    f()\nexcept Exception:\n    pass\n", True),
    ("try:\n    f()\nexcept:\n    x = 1\n", True),
    ("try:\n    f()\nexcept (OSError, BaseException) as e:\n    log.info('%s', e)\n", True),
    ("try:\n    f()\nexcept builtins.Exception:\n    return_value = None\n", True),
    ("try:\n    f()\nexcept Exception:\n    cleanup()\n    raise\n", False),
    ("try:\n    f()\nexcept Exception as e:\n    raise SlimkitError(str(e)) from None\n", False),
    ("try:\n    f()\nexcept Exception as e:\n    log.warning('failed: %s', e)\n", False),
    ("try:\n    f()\nexcept Exception as e:\n    logger.exception('failed')\n", False),
    ("try:\n    f()\nexcept Exception as e:  # recorded: returned as the reason\n"
     "    reason = str(e)\n", False),
    ("try:\n    f()\nexcept ValueError:\n    pass\n", False),  # narrow types are not checked
])
def test_checker_tells_silent_from_handled(body: str, silent: bool) -> None:
    assert bool(silent_handlers(body)) == silent
