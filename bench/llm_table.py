"""The table bench/llm_decode.py prints: medians, ratios to fp32 ONNX Runtime, and memory."""

from __future__ import annotations

BASE = "fp32 ORT"
PROBE = "fp32 ORT (probe)"


def ratio(value: float, base: float, higher_is_better: bool) -> str:
    """'2.10x faster' / '1.30x slower' against the base."""
    speed = value / base if higher_is_better else base / value
    return f"{speed:.2f}x faster" if speed >= 1 else f"{1 / speed:.2f}x slower"


def print_table(medians: dict[str, dict[str, float]], memory: dict[str, dict[str, float]],
                sizes: dict[str, float], agree: dict[str, int], parity: dict[str, float],
                new_tokens: int, threads: int,
                rounds: int) -> None:
    base = medians[BASE]
    base_rss = memory[BASE]["VmRSS"]
    base_model = base_rss - memory[BASE]["base_rss"]
    print(f"\n{threads} threads, {rounds} interleaved rounds (medians), {new_tokens} greedy "
          "tokens after a 512-token prompt; memory: fresh process per model\n")
    print("| variant | file MiB | prefill 128 ms | prefill 512 ms | decode tok/s | "
          "process resident MiB (% of fp32 ORT) | model MiB above runtime (%) | peak MiB | "
          f"greedy tokens = fp32 torch (of {new_tokens}) | logits vs torch, same weights |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in medians.items():
        mem = memory.get(name)
        size = f"{sizes[name]:.1f}" if name in sizes else "-"
        p512 = f"{m['prefill_512_ms']:.0f}"
        tps = f"{m['decode_tps']:.1f}"
        if name != BASE:
            p512 += f" ({ratio(m['prefill_512_ms'], base['prefill_512_ms'], False)})"
            tps += f" ({ratio(m['decode_tps'], base['decode_tps'], True)})"
        err = f"{parity[name]:.1e}" if name in parity else "-"
        if mem is None:
            rss = model = peak = "(probe: same file)"
        else:
            above = mem["VmRSS"] - mem["base_rss"]
            rss = f"{mem['VmRSS']:.0f} ({100 * mem['VmRSS'] / base_rss:.0f}%)"
            model = f"{above:.0f} ({100 * above / base_model:.0f}%)"
            peak = f"{mem['VmHWM']:.0f}"
        print(f"| {name} | {size} | {m['prefill_128_ms']:.0f} | {p512} | {tps} | {rss} | "
              f"{model} | {peak} | {agree[name]} | {err} |")
    probe = medians[PROBE]
    print(f"\nnoise probe (the same fp32 file in a second session): prefill 512 "
          f"{probe['prefill_512_ms'] / base['prefill_512_ms']:.3f}x, decode "
          f"{probe['decode_tps'] / base['decode_tps']:.3f}x of the fp32 ORT medians; ratios "
          "closer to 1 than that are noise. Logits: relative L2 error of the last position of "
          "the 128-token prompt against torch running the same (quantized) weights.")
