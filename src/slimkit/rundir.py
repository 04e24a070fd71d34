"""The run directory (`--out`) is the user's too: slimkit writes only into a directory it created
(marked by `.slimkit-run.json`) or an empty one, holds an exclusive lock on it while it runs, and
deletes only what it wrote there itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .core.errors import SlimkitError
from .export.artifact import MANIFEST, WEIGHTS

log = logging.getLogger(__name__)
MARKER = ".slimkit-run.json"
LOCK = ".slimkit-lock"
OWN_FILES = (MARKER, LOCK, f"{MARKER}.tmp")  # slimkit's bookkeeping: not the user's files
# Commands that write the same layout may reuse each other's directories.
FAMILIES = {"run": "plan", "demo": "plan", "run_plan": "plan", "auto": "auto"}
_held: dict[Path, int] = {}  # resolved path -> nesting depth: the CLI and run_plan both open it
# The environment refusing a write: read-only, full, over quota or a file-size limit.
WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM}


def cannot_write(path: Path | str, exc: OSError, field: str = "--out") -> SlimkitError:
    """The one line for a read-only, full or otherwise unwritable output directory."""
    where = exc.filename if exc.filename else path
    return SlimkitError(f"{field}: cannot write {str(where)!r} ({exc.strerror or exc})")


@contextlib.contextmanager
def write_errors(out: Path, field: str = "--out") -> Iterator[None]:
    """Turn a refused write anywhere in the block into the one-line `cannot_write` error."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise cannot_write(out, exc, field) from None
    except Exception as exc:
        # Native writers (safetensors' Rust core) report the OS error inside their message.
        found = re.search(r"\(os error (\d+)\)", str(exc))
        if found is None or int(found.group(1)) not in WRITE_ERRNOS:
            raise
        code = int(found.group(1))
        raise cannot_write(out, OSError(code, os.strerror(code)), field) from None


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory then os.replace: a reader (or a crash) never sees a
    half-written file, and the rename stays on one filesystem so it is atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 lets the umask decide permissions (mkstemp would force 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _made_by_slimkit(out: Path, command: str, field: str) -> bool:
    """True for a directory slimkit created for `command`'s family; refuses one of another."""
    family = FAMILIES[command]
    marker = out / MARKER
    if marker.exists():
        data = _read_json(marker)
        if not isinstance(data, dict) or data.get("tool") != "slimkit":
            raise SlimkitError(f"{field}: {str(marker)!r} is unreadable; choose another {field}")
        theirs = FAMILIES.get(str(data.get("command")), "?")
        if theirs != family:
            raise SlimkitError(f"{field}: {str(out)!r} holds a `slimkit {data.get('command')}` "
                               f"run, which `slimkit {command}` does not continue; choose "
                               f"another {field}")
        return True
    # Directories written before the marker existed: slimkit's own progress or search file.
    progress = _read_json(out / "progress.json")
    search = _read_json(out / "search.json")
    if family == "plan":
        return isinstance(progress, dict) and {"key", "stages"} <= set(progress)
    # An auto run keeps its study in out/study.db unless it was given another --storage.
    storage = str(search.get("storage", "")) if isinstance(search, dict) else ""
    local = (out / "study.db").is_file() or (bool(storage) and not storage.startswith("sqlite"))
    return isinstance(search, dict) and "trials" in search and local


def check_out(out: Path, command: str, field: str = "--out") -> None:
    """Refuse an `out` that exists, is not empty and was not created by slimkit for `command`.
    Touches nothing: call it before any work."""
    FAMILIES[command]  # an unknown command is a programming error: fail loudly here
    try:
        if not out.exists():
            return
        if not out.is_dir():
            raise SlimkitError(f"{field}: {str(out)!r} is a file, not a directory")
        entries = sorted(p.name for p in out.iterdir() if p.name not in OWN_FILES)
    except OSError as exc:
        raise cannot_write(out, exc, field) from None
    if _made_by_slimkit(out, command, field) or not entries:
        return
    raise SlimkitError(f"{field}: {str(out)!r} is not empty and was not created by slimkit "
                       f"(it holds {entries[0]!r}); choose a new or empty directory")


def _holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        data = {}
    if not data.get("pid"):
        return "another slimkit process"
    return (f"pid {data['pid']} on host {data.get('host', '?')} (slimkit "
            f"{data.get('command', '?')}, since {data.get('since', '?')})")


@contextlib.contextmanager
def open_run_dir(out: str | Path, command: str, field: str = "--out") -> Iterator[Path]:
    """Check `out` (`check_out`), create it, mark it as slimkit's and hold an exclusive lock on
    it until the block ends (normally or by an error). Re-entrant within one process.

    The lock is flock(2) on `out/.slimkit-lock`: the kernel releases it when the process dies
    (even by kill -9), so a stale lock never blocks `--resume`. The lock file is never deleted:
    unlinking it would let two processes lock different files of the same name.
    """
    out = Path(out)
    key = out.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield out
        finally:
            _held[key] -= 1
        return
    check_out(out, command, field)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise cannot_write(out, exc, field) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SlimkitError(f"{field}: {str(out)!r} is in use by {_holder(fd)}; wait for it "
                               f"to finish or choose another {field}") from None
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "since": since}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            if not (out / MARKER).exists():
                _write_marker(out, command, since)
        except OSError as exc:
            raise cannot_write(out, exc, field) from None
        _held[key] = 1
        try:
            yield out
        finally:
            del _held[key]
    finally:
        os.close(fd)  # releases the flock


def _write_marker(out: Path, command: str, since: str) -> None:
    tmp = out / f"{MARKER}.tmp"
    try:
        tmp.write_text(json.dumps({"tool": "slimkit", "command": command, "created": since}))
        os.replace(tmp, out / MARKER)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def clear_previous_run(out: Path) -> None:
    """Before a fresh (not resumed) run in a slimkit directory: remove the stage artifacts the
    previous run listed in its progress.json and its progress and metrics files, nothing else.
    A stage folder (or the final `model/`) holding anything besides the artifact's own two
    files refuses the run before anything is removed: the new run would replace that folder."""
    progress = _read_json(out / "progress.json")
    stages = progress.get("stages", []) if isinstance(progress, dict) else []
    root = (out / "stages").resolve()
    folders = []
    for stage in stages if isinstance(stages, list) else []:
        rel = stage.get("artifact") if isinstance(stage, dict) else None
        if not isinstance(rel, str):
            continue
        folder = (out / rel).resolve()
        if folder.parent == root and (folder / MANIFEST).is_file():
            folders.append(folder)  # only our own stages/NN-name artifacts
    for folder in [*folders, out / "model"]:
        foreign = sorted(p.name for p in folder.iterdir()
                         if p.name not in (WEIGHTS, MANIFEST)) if folder.is_dir() else []
        if foreign:
            raise SlimkitError(f"--out: {str(folder / foreign[0])!r} was not written by slimkit "
                               "and a new run would replace its folder; move it away or choose "
                               "another --out")
    for folder in folders:
        for name in (WEIGHTS, MANIFEST):
            (folder / name).unlink(missing_ok=True)
        folder.rmdir()
    for name in ("progress.json", "metrics.json"):
        (out / name).unlink(missing_ok=True)
