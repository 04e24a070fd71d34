"""A GGUF file run by llama.cpp (its Python binding, llama-cpp-python), on token ids slimkit's
causal-LM task wrote: perplexity on the same 512-token test chunks, prefill and decode speed,
and the process's resident memory, so a `slimkit gguf` export is checked where it deploys.

    python3 -m venv /tmp/llamacpp && /tmp/llamacpp/bin/pip install llama-cpp-python==0.3.36
        # builds llama.cpp from source with the machine's compiler: about 30 min on 2 cores
    .venv/bin/python bench/llm_gguf.py ids  OUT/ids.npy [--text lee-background]
    /tmp/llamacpp/bin/python bench/llm_gguf.py quality MODEL.gguf OUT/ids.npy [--threads 2]
    /tmp/llamacpp/bin/python bench/llm_gguf.py deploy MODEL.gguf OUT/ids.npy [--rounds 3]

`ids` (slimkit's venv) writes the task's test chunks [chunks, 512] as .npy. In the llama.cpp
venv (numpy and llama_cpp only), each prints one JSON line: `quality`, perplexity and mean NLL
over the chunks' next-token predictions (position t predicts t + 1, as the task scores them);
`deploy`, in a fresh process, prefill ms of the first chunk and greedy decode tokens/s after it
(medians over rounds), and VmRSS / VmHWM in MiB with the process's RSS before loading.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def write_ids(out: str, text: str | None, chunks: int) -> None:
    import slimkit

    task = slimkit.make_task("causal-lm", text_file=text, eval_chunks=chunks)
    np.save(out, task.chunks["test"].numpy().astype(np.int64))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def quality(model: str, ids_file: str, threads: int) -> dict[str, float]:
    """Perplexity and mean NLL over the chunks, every position's logits kept."""
    from llama_cpp import Llama

    ids = np.load(ids_file)
    length = ids.shape[1]
    llm = Llama(model_path=model, n_ctx=length, n_batch=length, n_threads=threads,
                logits_all=True, verbose=False)
    total, count = 0.0, 0
    for chunk in ids:
        llm.reset()
        llm.eval(chunk.tolist())
        logp = _log_softmax(np.asarray(llm.scores[:length], dtype=np.float64))
        total += float(-logp[np.arange(length - 1), chunk[1:]].sum())
        count += length - 1
    nll = total / count
    return {"perplexity": float(np.exp(nll)), "nll": nll}


def deploy(model: str, ids_file: str, threads: int, new_tokens: int,
           rounds: int) -> dict[str, float]:
    """Median prefill ms of the first chunk and greedy decode tokens/s after it over `rounds`,
    then the process's memory above what it held before loading (last-position logits only,
    as generation runs)."""
    import statistics

    from llama_cpp import Llama
    from proc_status import proc_status

    prompt = np.load(ids_file)[0].tolist()
    base = proc_status()
    llm = Llama(model_path=model, n_ctx=len(prompt) + new_tokens, n_batch=len(prompt),
                n_threads=threads, verbose=False)
    prefill, decode = [], []
    for _ in range(rounds):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefill.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        for _ in range(new_tokens):
            # Without logits_all the binding keeps no scores: read the context's last logits.
            last = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            llm.eval([int(np.argmax(last))])
        decode.append(new_tokens / (time.perf_counter() - start))
    status = proc_status()
    return {"prefill_512_ms": statistics.median(prefill), "decode_tps": statistics.median(decode),
            "base_rss": base["VmRSS"], **status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ids = sub.add_parser("ids")
    ids.add_argument("out")
    ids.add_argument("--text", default=None)
    ids.add_argument("--eval-chunks", type=int, default=16)
    for name in ("quality", "deploy"):
        go = sub.add_parser(name)
        go.add_argument("model")
        go.add_argument("ids")
        go.add_argument("--threads", type=int, default=2)
        go.add_argument("--new-tokens", type=int, default=64)
        go.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.command == "ids":
        write_ids(args.out, args.text, args.eval_chunks)
    elif args.command == "quality":
        print(json.dumps(quality(args.model, args.ids, args.threads)))
    else:
        print(json.dumps(deploy(args.model, args.ids, args.threads, args.new_tokens,
                                args.rounds)))


if __name__ == "__main__":
    main()
