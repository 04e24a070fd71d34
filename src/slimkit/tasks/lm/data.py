"""Text for the causal-LM task: documents from any UTF-8 text file (paragraphs split at blank
lines) or, by default, the Wikipedia sample that ships inside gensim's test data (pages with their
markup stripped), split by document into train / valid / test, so calibration and recovery text
never overlaps evaluation text."""

from __future__ import annotations

import re
from pathlib import Path

from ...core.errors import SlimkitError
from ..wiki import gensim_data

LEE_BACKGROUND = "lee_background.cor"
SPLITS = ("train", "valid", "test")
TEXT_FILE_HINT = "; or pass text_file=PATH"


def text_documents(path: str | Path) -> list[str]:
    """Paragraphs (blank-line separated) of a UTF-8 text file; one line per document for a file
    without blank lines (a corpus with one document a line)."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SlimkitError(f"text_file: {str(file)!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise SlimkitError(f"text_file: {str(file)!r} is not UTF-8 ({exc.reason} at byte "
                           f"{exc.start})") from None
    except OSError as exc:
        raise SlimkitError(f"text_file: cannot read {str(file)!r} ({exc.strerror})") from None
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text)]
    if len(blocks) < 10:
        blocks = [ln.strip() for ln in text.splitlines()]
    docs = [b for b in blocks if b]
    if not docs:
        raise SlimkitError(f"text_file: {str(file)!r} holds no text")
    return docs


def lee_background() -> list[str]:
    """300 news documents (gensim's Lee background corpus, latin-1): a second, different text."""
    lines = gensim_data(LEE_BACKGROUND, TEXT_FILE_HINT).read_text(encoding="latin-1").splitlines()
    return [ln.strip() for ln in lines if ln.strip()]


def split_documents(docs: list[str]) -> dict[str, list[str]]:
    """Every 10th document (from the first) to test, every 10th from the second to valid, the
    rest to train: each split samples the whole file, and no document is in two splits."""
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for i, doc in enumerate(docs):
        out["test" if i % 10 == 0 else "valid" if i % 10 == 1 else "train"].append(doc)
    return out
