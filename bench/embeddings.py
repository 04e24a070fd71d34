"""Benchmark: lookup throughput of compressed embedding tables against fp32 `nn.EmbeddingBag` and
fbgemm's quantized EmbeddingBag (slimkit's QuantizedEmbedding runs fbgemm's byte / 4-bit
kernels), on synthetic tables of 1M and 10M rows with Zipf-distributed ids, pooled bags, in one
interleaved timing per table size beside a noise probe (a copy of the fp32 bag).

    .venv/bin/python bench/embeddings.py [--rows 1000000 10000000] [--dim 64] [--bag 8]
        [--batches 512 4096] [--zipf 1.05] [--rounds 15] [--threads N]

Rows are random values (lookup speed does not depend on them); the ids of one batch are drawn
from a Zipf law over the rows, then the ranks are scattered by a fixed permutation so hot rows
are spread over the table as real ids are. Row counts for the frequency-aware types come from a
separate "training" sample of the same law. Each type's bytes are everything it stores.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from verdicts import noise_line, speed_cell  # noqa: E402

from slimkit.eval.cost import DEFAULT_ROUNDS, latency_interleaved  # noqa: E402
from slimkit.export.runtime import available_cores  # noqa: E402
from slimkit.methods.truncate.embedding_hash import EmbeddingHash, hash_table  # noqa: E402
from slimkit.methods.truncate.embedding_qr import EmbeddingQR, qr_table  # noqa: E402
from slimkit.nn.frequency_embedding import FrequencyEmbedding  # noqa: E402
from slimkit.nn.quantized_embedding import QuantizedEmbedding  # noqa: E402
from slimkit.nn.tt_embedding import TTEmbedding, balanced_factors, exact_factors  # noqa: E402

REFERENCE = "fp32 EmbeddingBag"


class ZipfIds:
    """Ids with P(rank r) proportional to r^-s, ranks scattered over the rows."""

    def __init__(self, rows: int, s: float, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        weights = torch.arange(1, rows + 1, dtype=torch.float64).pow(-s)
        self.cdf = torch.cumsum(weights, 0)
        self.cdf /= self.cdf[-1].clone()
        self.scatter = torch.randperm(rows, generator=g)
        self.rows = rows

    def sample(self, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(math.prod(shape), generator=g, dtype=torch.float64)
        ranks = torch.searchsorted(self.cdf, u).clamp(max=self.rows - 1)
        return self.scatter[ranks].reshape(shape)


def stored_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size()
               for t in [*module.parameters(), *module.buffers()])


def tt_bag(table: nn.EmbeddingBag, rank: int) -> TTEmbedding:
    """TT cores of the table's shape at `rank` (random values: speed only)."""
    rows, dim = table.weight.shape
    rf, df = balanced_factors(rows, 3), exact_factors(dim, 3)
    new = TTEmbedding(rows, dim, rf, df, [rank, rank], mode="sum")
    with torch.no_grad():
        for core in new.cores:
            core.normal_(0, 0.1)
    return new


def frequency_bag(table: nn.EmbeddingBag, counts: torch.Tensor) -> FrequencyEmbedding:
    """Rows by read count: the top 5% at 8 bits, the next 25% at 4, the other rows read at 2,
    the rows never read share the default row (their mean)."""
    order = torch.argsort(counts, descending=True, stable=True)
    n = len(order)
    widths = torch.full((n,), 2, dtype=torch.long)
    widths[order[:n // 20]] = 8
    widths[order[n // 20:n * 3 // 10]] = 4
    unseen = counts == 0
    widths[unseen & (widths == 2)] = 0
    # The mean of the unread rows without copying them (most rows of a 10M table).
    chosen = unseen if bool(unseen.any()) else torch.ones_like(unseen)
    default = (chosen.float() @ table.weight.detach()) / chosen.sum()
    return FrequencyEmbedding.build(table.weight, widths, default, mode=table.mode)


def shrunk(module: nn.Module | str) -> nn.Module:
    if isinstance(module, str):
        raise SystemExit(f"table cannot be rebuilt: {module}")
    return module


def builders(args: argparse.Namespace) -> dict[str, Callable[..., nn.Module]]:
    """name -> build(fp32 bag, training counts); each type slimkit offers for tables."""
    return {
        "fbgemm int8 rows": lambda t, c: QuantizedEmbedding.from_float(t, 8),
        "fbgemm int4 rows": lambda t, c: QuantizedEmbedding.from_float(t, 4),
        "2 bits, one width (fbgemm)": lambda t, c: FrequencyEmbedding.build(
            t.weight, torch.full((t.num_embeddings,), 2), torch.zeros(t.embedding_dim),
            mode=t.mode),
        "frequency 8/4/2 + default": frequency_bag,
        "hash 1/8 (half hot)": lambda t, c: shrunk(hash_table(t, c, EmbeddingHash(budget=0.125))),
        "QR 1/8 (mult)": lambda t, c: shrunk(qr_table(t, c, EmbeddingQR(budget=0.125,
                                                                         iterations=2))),
        f"TT rank {args.tt_rank}": lambda t, c: tt_bag(t, args.tt_rank),
    }


def run_size(rows: int, args: argparse.Namespace) -> list[str]:
    torch.manual_seed(0)
    start = time.perf_counter()
    table = nn.EmbeddingBag(rows, args.dim, mode="sum")
    zipf = ZipfIds(rows, args.zipf)
    counts = torch.bincount(zipf.sample((args.train_ids,), seed=1), minlength=rows)
    models: dict[str, nn.Module] = {REFERENCE: table.eval()}
    for name, build in builders(args).items():
        with torch.no_grad():
            models[name] = build(table, counts).eval()
    inputs = {b: (zipf.sample((b, args.bag), seed=100 + b),) for b in args.batches}
    with torch.no_grad():
        for model in models.values():  # every type runs once on the ids before timing
            model(*inputs[args.batches[0]])
    built = time.perf_counter() - start
    with torch.no_grad():
        timed = latency_interleaved(models, inputs, rounds=args.rounds, threads=args.threads)
    probe = REFERENCE  # judged by the noise of its own probe
    lines = [f"\n{rows:,} rows x {args.dim}, bags of {args.bag} (Zipf s={args.zipf}); "
             f"built in {built:.0f} s; {noise_line(timed)}",
             "| table | MB | " + " | ".join(f"batch {b}: ms, M lookups/s, vs fp32"
                                          for b in args.batches) + " |",
             "|---|---|" + "---|" * len(args.batches)]
    for name, model in models.items():
        cells = []
        for b in args.batches:
            ms = timed[name][str(b)]["median"]
            rate = b * args.bag / ms / 1e3
            cells.append(f"{ms:.3f}, {rate:.1f}, {speed_cell(timed, name, REFERENCE, b, probe)}")
        lines.append(f"| {name} | {stored_bytes(model) / 1e6:.1f} | " + " | ".join(cells) + " |")
    del models, table, timed
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--bag", type=int, default=8)
    parser.add_argument("--batches", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--zipf", type=float, default=1.05)
    parser.add_argument("--tt-rank", type=int, default=16)
    parser.add_argument("--train-ids", type=int, default=20_000_000)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--threads", type=int, default=available_cores())
    args = parser.parse_args()
    for rows in args.rows:
        print("\n".join(run_size(rows, args)), flush=True)


if __name__ == "__main__":
    main()
