"""Benchmark: the two-tower model on MovieLens-100k and its item index compressed.

Trains the towers (about 10 s on one thread; cached in --cache), embeds the full catalogue, builds
each index and ranks every test user's unseen items: recall@10, recall@50 and nDCG@10 (also as
% of the exact float index), bytes stored and bytes every query scans (binary rescoring reads
int8 rows of its candidates only, from disk in sentence-transformers' recipe), the ratio at a
projected catalogue of 1M items (codebooks and ranges amortised), and the median latency of a
query (user tower + search of the top 10, seen items excluded) at batch 1 and 256, all indexes
timed interleaved in one process with a duplicate of the float index as the noise probe.

    .venv/bin/python bench/retrieval.py [--cache runs/bench-retrieval] [--threads 1] [--rounds 7]
                                        [--model runs/two-tower/model]

--model takes a slimkit artifact (such as `slimkit run --task two-tower --out DIR`'s DIR/model,
towers already compressed) instead of training.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.core.context import Context
from slimkit.eval.cost import PROBE, latency_interleaved
from slimkit.index import BinaryIndex, FlatIndex, Int8Index, PQIndex, load_index, save_index
from slimkit.tasks.retrieval.metrics import ranking_metrics
from slimkit.tasks.retrieval.task import RECIPE, TwoTowerTask
from slimkit.train.teacher import train_best_on_valid

PROJECTED_ITEMS = 1_000_000
PLAIN_BITS: dict[str, Any] = {"center": False, "query": "bits"}  # signs, Hamming search
BUILDERS = {
    "float": lambda x: FlatIndex.build(x),
    "int8 per-dim": lambda x: Int8Index.build(x, per="dim"),
    "int8 per-vector": lambda x: Int8Index.build(x, per="vector"),
    "pq m=8": lambda x: PQIndex.build(x, m=8),
    "pq m=16": lambda x: PQIndex.build(x, m=16),
    "pq m=32": lambda x: PQIndex.build(x, m=32),
    "pq m=16 fp16 books": lambda x: PQIndex.build(x, m=16, codebook_dtype="float16"),
    "binary (hamming)": lambda x: BinaryIndex.build(x, **PLAIN_BITS),
    "binary + binary rescore x4": lambda x: BinaryIndex.build(x, rescore="binary", multiplier=4,
                                                              **PLAIN_BITS),
    "binary + binary rescore x10": lambda x: BinaryIndex.build(x, rescore="binary",
                                                               multiplier=10, **PLAIN_BITS),
    "binary + int8 rescore x4": lambda x: BinaryIndex.build(x, rescore="int8", multiplier=4,
                                                            **PLAIN_BITS),
    "binary + int8 rescore x10": lambda x: BinaryIndex.build(x, rescore="int8", multiplier=10,
                                                             **PLAIN_BITS),
    "binary centred, float query": lambda x: BinaryIndex.build(x),
    "binary centred + int8 rescore x10": lambda x: BinaryIndex.build(x, rescore="int8",
                                                                     multiplier=10),
}


class Query(nn.Module):
    """What a query costs: the user tower, then the index's top 10 with seen items excluded."""

    def __init__(self, model: nn.Module, index: Any) -> None:
        super().__init__()
        self.model, self.index = model, index

    def forward(self, user: torch.Tensor, history: torch.Tensor,
                exclude: torch.Tensor) -> torch.Tensor:
        return self.index.search(self.model.encode_users(user, history), 10, exclude=exclude)[1]


def towers(task: TwoTowerTask, cache: Path, seed: int) -> nn.Module:
    from safetensors.torch import load_file, save_file

    path = cache / f"two_tower_d{task.dim}.safetensors"
    model = task.build_model()
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    start = time.perf_counter()
    model = train_best_on_valid(task, Context(seed=seed), "two-tower", RECIPE)
    logging.info("towers trained in %.1f s", time.perf_counter() - start)
    cache.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval()


def per_item_bytes(index: Any) -> tuple[int, int]:
    """(bytes per item, fixed bytes): tensors whose rows are the items scale with the catalogue."""
    per = sum(t[0].numel() * t.element_size() for t in index.tensors().values()
              if t.dim() and t.shape[0] == len(index))
    return per, index.nbytes - per * len(index)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("runs/bench-retrieval"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None, help="a slimkit artifact directory")
    ap.add_argument("--dim", type=int, default=64, help="tower output width (a multiple of 32)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    task = TwoTowerTask.movielens(dim=args.dim)
    if args.model is not None:
        import slimkit

        model = slimkit.load(args.model).model.eval()
    else:
        model = towers(task, args.cache, args.seed)
    q = task.queries("test")
    items = task.item_embeddings(model)[1:]  # row 0 is padding, not a catalogue item
    users = task.user_embeddings(model, "test")
    exclude, relevant = q["exclude"][:, 1:], q["relevant"][:, 1:]
    print(f"task {json.dumps(task.describe())}")
    print(f"model evaluate (test): {json.dumps(task.evaluate(model))}")

    rows, indexes = [], {}
    for name, build in BUILDERS.items():
        start = time.perf_counter()
        index = build(items)
        built = time.perf_counter() - start
        args.cache.mkdir(parents=True, exist_ok=True)
        path = args.cache / "index.safetensors"
        save_index(index, path)
        back = load_index(path)
        _, ids = index.search(users, 50, exclude=exclude)
        same = torch.equal(back.search(users, 50, exclude=exclude)[1], ids)
        rows.append({"name": name, "metrics": ranking_metrics(ids, relevant),
                     "bytes": index.nbytes, "scan": getattr(index, "search_bytes", index.nbytes),
                     "per_item": per_item_bytes(index), "file": path.stat().st_size,
                     "reload": same, "build_s": built})
        indexes[name] = index

    inputs = {b: (task.data.user_features[q["user"][:b]], q["history"][:b], exclude[:b])
              for b in (1, 256)}
    timing = latency_interleaved({n: Query(model, ix) for n, ix in indexes.items()}, inputs,
                                 rounds=args.rounds, threads=args.threads)
    base = rows[0]
    cols = ("index", "bytes", "x smaller", "bytes scanned", "x scanned", "x @1M items",
            "R@10", "% float", "R@50", "% float", "nDCG@10", "% float", "ms@1", "ms@256",
            "build s", "reload")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        per, fixed = r["per_item"]
        fper, ffixed = base["per_item"]
        cells = [r["name"], f"{r['bytes']:,}", f"{base['bytes'] / r['bytes']:.2f}",
                 f"{r['scan']:,}", f"{base['bytes'] / r['scan']:.2f}",
                 f"{(fper * PROJECTED_ITEMS + ffixed) / (per * PROJECTED_ITEMS + fixed):.2f}"]
        for key in ("recall@10", "recall@50", "ndcg@10"):
            v, b = r["metrics"][key], base["metrics"][key]
            cells += [f"{v:.4f}", f"{100 * v / b:.1f}"]
        cells += [f"{timing[r['name']][str(b)]['median']:.3f}" for b in (1, 256)]
        cells += [f"{r['build_s']:.2f}", "identical" if r["reload"] else "DIFFERS"]
        print("| " + " | ".join(cells) + " |")
    probe = timing[PROBE + "float"]
    print(f"noise probe (second float index): ms@1 {probe['1']['median']:.3f}, ms@256 "
          f"{probe['256']['median']:.3f}; noise band {json.dumps(timing.noise['float'])}; "
          f"threads {timing.threads}, rounds {args.rounds}")
    print("per-round fastest ms@256, median: " + ", ".join(
        f"{n} {statistics.median(timing.rounds[n]['256']):.3f}" for n in indexes))


if __name__ == "__main__":
    main()
