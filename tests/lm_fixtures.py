"""A tiny local causal-LM folder (random Llama, tied head, a BPE tokenizer trained here) and a
text file, so the causal-LM task runs in tests without the real SmolLM2."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the model compresses weights into small codes while search ranks documents for users "
         "who click items and read news about trains rivers cities music history science").split()


def write_text(path: Path, paragraphs: int = 300, seed: int = 0) -> Path:
    rng = random.Random(seed)
    text = "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + "."
                       for _ in range(paragraphs))
    path.write_text(text, encoding="utf-8")
    return path


def write_tiny_lm(folder: Path, text_file: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train([str(text_file)], trainers.BpeTrainer(vocab_size=200,
                                                    special_tokens=["<unk>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


# The task options the tests use with the tiny model: short chunks, few of them.
TINY_TASK_OPTIONS = {"seq_len": 32, "eval_chunks": 4, "eval_batch": 2, "calibration_rows": 2}


def tiny_lm_task(folder: Path, text_file: Path):
    from slimkit.tasks.registry import make_task

    return make_task("causal-lm", model_path=str(folder), text_file=str(text_file),
                     **TINY_TASK_OPTIONS)
