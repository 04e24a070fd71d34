"""Text that ships inside gensim's test data, shared by the text tasks: the Wikipedia sample
(pages with their markup stripped, with their titles) and the files found beside it, read
without importing gensim (its dependencies are not needed for its data files)."""

from __future__ import annotations

import bz2
import functools
import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from ..core.errors import SlimkitError

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MIN_DOCUMENT_CHARS = 200  # stubs and leftover list fragments carry little running text


def gensim_data(name: str, hint: str = "") -> Path:
    """A file of gensim's test data, found without importing gensim (its deps are not needed).
    `hint` ends the error when gensim is missing (say, another way to give the text)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise SlimkitError("gensim: not installed; the default texts ship inside it (pip "
                           f"install --no-deps gensim==4.4.0){hint}")
    return Path(spec.submodule_search_locations[0]) / "test" / "test_data" / name


# Wikipedia markup, removed in this order (the same kinds of markup gensim's filter_wiki drops).
_COMMENTS = re.compile(r"<!--.*?-->", re.S)
_REFS = re.compile(r"<ref[^>/]*?/>|<ref[^>]*?>.*?</ref>", re.S | re.I)
_TAGS = re.compile(r"<[^>]+>")
_FILES = re.compile(r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*"
                    r"(?:\[\[[^\[\]]*\]\][^\[\]]*)*\]\]", re.I)
_LINKS = re.compile(r"\[\[(?:[^|\[\]]*\|)?([^\[\]]*)\]\]")
_EXTERNAL = re.compile(r"\[(?:https?|ftp)://\S+\s?([^\]]*)\]")
_QUOTES = re.compile(r"'{2,}")
_HEADINGS = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M)
_ENTITIES = {"&nbsp;": " ", "&ndash;": "-", "&mdash;": "-", "&amp;": "&", "&quot;": '"',
             "&lt;": "<", "&gt;": ">"}


def _strip_nested(text: str, start: str, end: str) -> str:
    """Drop every balanced start...end span ({{templates}}, {| tables |}), nested ones too."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(start, i):
            depth, i = depth + 1, i + len(start)
        elif depth and text.startswith(end, i):
            depth, i = depth - 1, i + len(end)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def clean_wiki(markup: str) -> str:
    """Running text of one page's wiki markup."""
    text = _COMMENTS.sub("", markup)
    text = _REFS.sub("", text)
    text = _strip_nested(text, "{{", "}}")
    text = _strip_nested(text, "{|", "|}")
    for _ in range(2):  # links inside file captions
        text = _FILES.sub("", text)
    text = _LINKS.sub(r"\1", text)
    text = _EXTERNAL.sub(r"\1", text)
    text = _TAGS.sub("", text)
    text = _QUOTES.sub("", text)
    text = _HEADINGS.sub(r"\1", text)
    for entity, value in _ENTITIES.items():
        text = text.replace(entity, value)
    lines = [ln.strip() for ln in text.splitlines()]
    # Bullet lists and leftover table rows are not running text.
    lines = [ln for ln in lines if ln and not ln.startswith(("*", "#", "|", "!", ":", ";"))]
    return "\n".join(lines)


def wiki_pages(path: Path | None = None) -> list[str]:
    """The cleaned articles of the Wikipedia sample, in file order (redirects left out)."""
    return [text for _title, text in wiki_articles(path)]


@functools.cache
def _default_articles() -> tuple[tuple[str, str], ...]:
    return tuple(_read_articles(gensim_data(WIKI_FILE)))


def wiki_articles(path: Path | None = None) -> list[tuple[str, str]]:
    """(title, cleaned text) of each article of the Wikipedia sample (or of a MediaWiki XML
    dump at `path`), in file order, redirects and stubs left out. The default sample is parsed
    once per process (about 3 s)."""
    return list(_default_articles() if path is None else _read_articles(path))


def _read_articles(path: Path) -> list[tuple[str, str]]:
    pages = []
    with bz2.open(path, "rb") as fh:
        for _event, elem in ET.iterparse(fh):
            if elem.tag.rpartition("}")[2] != "page":
                continue
            text = next((t.text for t in elem.iter() if t.tag.rpartition("}")[2] == "text"), "")
            ns = next((t.text for t in elem.iter() if t.tag.rpartition("}")[2] == "ns"), "0")
            title = next((t.text for t in elem.iter() if t.tag.rpartition("}")[2] == "title"),
                         "") or ""
            elem.clear()
            if ns == "0" and text and not text.lstrip().upper().startswith("#REDIRECT"):
                cleaned = clean_wiki(text)
                if len(cleaned) >= MIN_DOCUMENT_CHARS:
                    pages.append((title.strip(), cleaned))
    return pages
