"""`slimkit index`: a corpus embedded by an encoder (an exported folder, or an artifact exported on
the way), indexed, checked against exact search and written as a bundle whose search.py finds
a document from its own text; bad input refused with one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from encoder_fixtures import tiny_encoder_folder

from slimkit.cli.main import main

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

DOCS = [f"the {c} {w} {v}" for c in ("red dress", "wool coat", "linen shirt", "denim skirt")
        for w in ("fits well", "runs small", "feels soft", "is too long", "looks great")
        for v in ("today", "after washing")]  # 40 documents


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    return tiny_encoder_folder(tmp_path_factory.mktemp("enc") / "encoder")


def _search(bundle: Path, query: str) -> dict:
    run = subprocess.run([sys.executable, str(bundle / "search.py"), "--json", "-k", "3",
                          "--threads", "1", "--verify", query],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["results"][0]["hits"]


def test_index_from_an_encoder_folder(encoder, tmp_path, capsys) -> None:
    folder, _, _ = encoder
    texts = tmp_path / "docs.txt"
    # A carriage return or a line separator inside a line does not split the document.
    texts.write_text("\r\n".join([*DOCS[:-2], DOCS[-2] + "\r with a note",
                                   DOCS[-1] + "\u2028 with a note"]) + "\n\n", newline="")
    out = tmp_path / "bundle"
    assert main(["index", str(folder), str(texts), "--out", str(out), "--threads", "1",
                 "--multiplier", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["items"] == len(DOCS) and result["kind"] == "binary"
    assert result["bytes_scanned"] < result["float_bytes"] / 8
    assert 0.0 <= result["check"]["recall"] <= 1.0 and result["check"]["queries"] == len(DOCS)
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["items"] == len(DOCS) and manifest["config"]["multiplier"] == 4
    assert (out / "encoder" / "model.onnx").is_file()
    hits = _search(out, DOCS[7])
    assert hits[0]["id"] == 7 and hits[0]["text"] == DOCS[7]
    # Replacing needs --force; the bundle stays as it was.
    before = (out / "bundle.json").read_bytes()
    assert main(["index", str(folder), str(texts), "--out", str(out), "--kind", "int8"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "bundle.json").read_bytes() == before
    assert main(["index", str(folder), str(texts), "--out", str(out), "--kind", "flat",
                 "--force", "--threads", "1", "--json"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert exact["kind"] == "flat" and exact["check"]["recall"] == 1.0


def test_index_from_an_artifact_exports_the_encoder(encoder, tmp_path, capsys) -> None:
    import slimkit
    from slimkit.tasks.text.task import TextEncoderTask

    _, model, tokenizer = encoder
    task = TextEncoderTask(tokenizer=tokenizer, corpus_size=50, probe_train=50, probe_test=50,
                           train_size=50, queries=10)
    task.spec = {"name": "text-encoder", "kwargs": {"corpus_size": 50, "probe_train": 50,
                                                     "probe_test": 50, "train_size": 50,
                                                     "queries": 10}}
    slimkit.save(model, tmp_path / "artifact", task=task)
    texts = tmp_path / "docs.jsonl"
    texts.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS)))
    out = tmp_path / "bundle"
    assert main(["index", str(tmp_path / "artifact"), str(texts), "--out", str(out),
                 "--threads", "1", "--quantize", "none", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == len(DOCS)
    assert _search(out, DOCS[21])[0]["id"] == 21


@pytest.mark.parametrize(("argv", "message"), [
    (["MISSING_TEXTS"], "texts: no such file"),
    (["EMPTY_TEXTS"], "holds no documents"),
    (["BAD_JSONL"], "line 2"),
    (["TEXTS", "--multiplier", "0"], "--multiplier"),
    (["TEXTS", "--kind", "pq", "--pq-m", "5"], "--pq-m"),
])
def test_bad_input_is_one_line_and_exit_2(encoder, tmp_path, capsys, argv, message) -> None:
    folder, _, _ = encoder
    files = {"TEXTS": tmp_path / "docs.txt", "EMPTY_TEXTS": tmp_path / "empty.txt",
             "BAD_JSONL": tmp_path / "bad.jsonl", "MISSING_TEXTS": tmp_path / "none.txt"}
    files["TEXTS"].write_text("\n".join(DOCS))
    files["EMPTY_TEXTS"].write_text("\n \n")
    files["BAD_JSONL"].write_text('"one"\n{not json}\n')
    args = [str(files.get(a, a)) for a in argv]
    assert main(["index", str(folder), *args, "--out", str(tmp_path / "b"),
                 "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "b").exists()


def test_an_encoder_that_is_neither_is_refused(tmp_path, capsys) -> None:
    texts = tmp_path / "docs.txt"
    texts.write_text("a\nb\n")
    assert main(["index", str(tmp_path), str(texts), "--out", str(tmp_path / "b")]) == 2
    assert "neither an encoder folder" in capsys.readouterr().err
