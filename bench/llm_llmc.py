"""llm-compressor's GPTQ (W4A16: 4-bit symmetric weights, one scale per group of 64 inputs, fp
activations) on the calibration chunks bench/llm.py hands it, run in llm-compressor's own virtual
environment (llmcompressor 0.14.0.1 pins transformers <= 5.17, slimkit's has 5.23), so this file
imports neither slimkit nor anything of the bench.

    LLMC_PYTHON bench/llm_llmc.py MODEL_FOLDER CALIB.safetensors OUT_FOLDER

MODEL_FOLDER: the fp32 Hugging Face folder (the cached SmolLM2 conversion); CALIB.safetensors:
one int64 tensor "input_ids" [chunks, seq_len] (safetensors, not pickle). Writes
OUT_FOLDER/dequantized.safetensors (each quantized Linear's weight as llm-compressor leaves it
after GPTQ: de-quantized fp32, so the bench loads it into its own fp32 model and scores it with
the same code as every other row) and OUT_FOLDER/compressed/ (llm-compressor's own saved,
packed format: the artifact size), and prints one JSON line with the compression time and memory
(from this process's /proc/self/status; VmHWM is reset after loading so it is the peak while
compressing).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from proc_status import proc_status  # bench/, the scripts' own folder, is on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
GROUP = 64




def main() -> None:
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, calib, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    ids = load_file(calib)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = Dataset.from_dict({"input_ids": ids.tolist(),
                              "attention_mask": torch.ones_like(ids).tolist()})
    loaded = proc_status()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group",
                               group_size=GROUP)
    recipe = GPTQModifier(config_groups={"w4g64": QuantizationScheme(targets=["Linear"],
                                                                     weights=weights)},
                          ignore=["lm_head"])  # the head is the tied embedding: kept, as slimkit
    start = time.perf_counter()
    oneshot(model=model, processor=tokenizer, dataset=data, recipe=recipe,
            num_calibration_samples=len(ids), max_seq_length=ids.shape[1])
    seconds = time.perf_counter() - start
    peak = proc_status()
    out.mkdir(parents=True, exist_ok=True)
    layers = {}
    state = {}
    for name, module in model.named_modules():
        scale = getattr(module, "weight_scale", None)
        if isinstance(module, torch.nn.Linear) and scale is not None:
            state[f"{name}.weight"] = module.weight.detach().float().contiguous()
            zero = getattr(module, "weight_zero_point", None)
            layers[name] = {"scale_numel": scale.numel(), "scale_bytes": scale.element_size(),
                            "zero_numel": 0 if zero is None or weights.symmetric
                            else zero.numel()}
    save_file(state, out / "dequantized.safetensors")
    model.save_pretrained(out / "compressed", save_compressed=True)
    print(json.dumps({"seconds": seconds, "loaded_rss": loaded["VmRSS"],
                      "load_peak": loaded["VmHWM"], "compress_peak": peak["VmHWM"],
                      "layers": layers}))


if __name__ == "__main__":
    main()
