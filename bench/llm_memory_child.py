"""Resident memory of one deployed causal LM in ONNX Runtime, measured in the process that runs it.

    python bench/llm_memory_child.py MODEL.onnx PROMPT_IDS.npy THREADS DECODE_STEPS

Imports only numpy and onnxruntime (what a deployment needs; slimkit would pull in torch, about
200 MiB), reads VmRSS before the session exists, loads it, prefills the prompt, decodes greedily,
and prints one JSON line: base_rss, VmRSS, VmHWM in MiB, from /proc/self/status (ru_maxrss of a
forked child would report the parent's peak).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
from proc_status import proc_status  # bench/, the scripts' own folder, is on sys.path


def main() -> None:
    path, ids_file, threads, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ids = np.load(ids_file)
    base = proc_status()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    cache_inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    kv_heads, head_dim = int(cache_inputs[0].shape[1]), int(cache_inputs[0].shape[3])
    cache = [np.zeros((1, kv_heads, 0, head_dim), np.float32) for _ in cache_inputs]
    tokens, total = ids, ids.shape[1]
    for _ in range(steps + 1):
        seq = tokens.shape[1]
        feed = {"input_ids": tokens, "attention_mask": np.ones((1, total), np.int64),
                "position_ids": np.arange(total - seq, total, dtype=np.int64)[None]}
        feed.update({i.name: c for i, c in zip(cache_inputs, cache, strict=True)})
        logits, *cache = session.run(None, feed)
        tokens = logits[:, -1:].argmax(-1).astype(np.int64)
        total += 1
    print(json.dumps({"base_rss": base["VmRSS"], **proc_status()}))


if __name__ == "__main__":
    main()
