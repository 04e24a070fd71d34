"""Benchmark: structured pruning with physical removal on BERT, GPT-2, Llama and Qwen2 (small
random configs), the Fashion-MNIST CNN, and the real all-MiniLM-L6-v2.

For each model: parameters before/after, artifact bytes, reload exactness, ONNX export parity, and
latency in torch and ONNX Runtime, fp32 before vs after, interleaved in one process beside a noise
probe of each runtime's "before" (medians; each speed-up with its verdict).

    .venv/bin/python bench/structured.py [--threads N] [--rounds 15] [--skip-minilm]
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
from pathlib import Path

import torch
from verdicts import noise_line, speed_cell

import slimkit
from slimkit.eval.cost import DEFAULT_ROUNDS, latency_interleaved
from slimkit.export import artifact_bytes
from slimkit.export.onnx import check_parity, export_onnx
from slimkit.export.runtime import OrtSession, available_cores
from slimkit.models import MainOutput, example_inputs, first_tensor, tiny_model
from slimkit.tasks.inputs import InputsTask
from slimkit.tasks.vision.models import SmallCNN

HF_SEQ = 128


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


Inputs = tuple[torch.Tensor, ...]


def _cases(args: argparse.Namespace) -> list[tuple[str, torch.nn.Module, slimkit.Structured,
                                                   dict[int, Inputs], list[Inputs]]]:
    """(name, model, config, timing inputs by batch size, calibration batches)."""
    cases = []
    for arch in ("bert", "gpt2", "llama", "qwen2"):
        model = tiny_model(arch)
        inputs = {b: example_inputs(model, batch=b, seq=HF_SEQ, seed=1) for b in (1, 8)}
        calib = [example_inputs(model, batch=8, seq=HF_SEQ, seed=2)]
        cases.append((arch, model, slimkit.Structured(ratio=0.5), inputs, calib))
    torch.manual_seed(0)
    cnn = SmallCNN().eval()
    cnn.slimkit_spec = {"builder": "slimkit.tasks.vision.models:SmallCNN", "kwargs": {}}
    cases.append(("cnn", cnn, slimkit.Structured(ratio=0.5),
                  {b: (torch.randn(b, 1, 28, 28),) for b in (1, 256)},
                  [(torch.randn(64, 1, 28, 28),)]))
    if not args.skip_minilm:
        from slimkit.models import load_minilm, minilm_tokenizer

        model = load_minilm()
        tok = minilm_tokenizer()
        texts = _reviews(160)

        def encode(batch: list[str]) -> Inputs:
            out = tok(batch, padding="max_length", truncation=True, max_length=HF_SEQ,
                      return_tensors="pt")
            return out["input_ids"], out["attention_mask"]

        ids, mask = encode(texts[:32])
        inputs = {1: (ids[:1], mask[:1]), 32: (ids, mask)}
        # Calibrate on other reviews than those the quality column is measured on.
        calib = [encode(texts[32 + 16 * i:48 + 16 * i]) for i in range(8)]
        config = slimkit.Structured(ratio=0.5, head_ratio=0.25, criterion="activation")
        cases.append(("minilm", model, config, inputs, calib))
    return cases


def _reviews(n: int) -> list[str]:
    from slimkit.tasks.text.data import clothing_reviews

    return clothing_reviews()[0][:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--skip-minilm", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    cols = ("model", "params before → after", "cut", "artifact MB", "reload", "ONNX parity",
            "batch", "torch ms before → after", "torch x", "ORT ms before → after", "ORT x",
            "quality")
    rows = []
    for name, model, config, inputs, calib in _cases(args):
        batches = sorted(inputs)
        small = inputs[batches[0]]
        task = InputsTask(calib)
        pruned = copy.deepcopy(model)
        slimkit.compress_(pruned, slimkit.Plan([config]), slimkit.Context(task=task))
        before, after = _n_params(model), _n_params(pruned)
        path = slimkit.save(pruned, tmp / name)
        loaded = slimkit.load(path).model
        with torch.no_grad():
            x = inputs[batches[-1]]
            same = torch.equal(first_tensor(loaded(*x)), first_tensor(pruned(*x)))
            quality = _quality(name, model, pruned, x)
        runners = {}
        parity = []
        for label, m in (("before", model), ("after", pruned)):
            wrapped = MainOutput(m) if name != "cnn" else m
            onnx_path = export_onnx(wrapped, small, tmp / f"{name}-{label}.onnx")
            p = check_parity(wrapped, onnx_path, x, min_cosine=0.999, atol=1e-3)
            parity.append(p.cosine)
            runners[f"torch {label}"] = wrapped
            runners[f"ort {label}"] = OrtSession(onnx_path, threads=args.threads, spin=False)
        lat = latency_interleaved(runners, inputs, rounds=args.rounds, repeats=3,
                                  probes=["torch before", "ort before"], threads=args.threads)
        for b in batches:
            def ms(key: str, b: int = b, lat: dict = lat) -> float:
                return lat[key][str(b)]["median"]
            rows.append([
                name, f"{before / 1e6:.2f}M → {after / 1e6:.2f}M", f"{1 - after / before:.0%}",
                f"{artifact_bytes(path) / 1e6:.1f}", "identical" if same else "DIFFERS",
                f"{min(parity):.5f}", str(b),
                f"{ms('torch before'):.2f} → {ms('torch after'):.2f}",
                speed_cell(lat, "torch after", "torch before", b, "torch before"),
                f"{ms('ort before'):.2f} → {ms('ort after'):.2f}",
                speed_cell(lat, "ort after", "ort before", b, "ort before"), quality])
        print(f"done {name}: {noise_line(lat)}", flush=True)
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _quality(name: str, model: torch.nn.Module, pruned: torch.nn.Module,
             x: tuple[torch.Tensor, ...]) -> str:
    """Agreement with the unpruned model before any recovery training (random models: none)."""
    if name != "minilm":
        return "-"
    from slimkit.models import mean_pool

    a = mean_pool(model(*x).last_hidden_state, x[1])
    b = mean_pool(pruned(*x).last_hidden_state, x[1])
    return f"cosine to fp32 {torch.nn.functional.cosine_similarity(a, b).mean():.3f}"


if __name__ == "__main__":
    main()
