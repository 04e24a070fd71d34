"""The structured-pruning zoo: third-party architectures built from configs with random weights.

Each entry builds (model, example inputs at a batch size). Text models carry a task head
(sequence classification or a language-model head) and vision models an image classifier, so the
head protects the output and every width inside may be cut. Sizes are small enough for a 2-core
machine and large enough that a forward pass is compute, not Python overhead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Build = Callable[[], nn.Module]
SEQ = 128
IMAGE = 160

# Uniform text sizes: hidden 256, 8 heads of 32, FFN 1024, 4 layers.
_TEXT = {"vocab_size": 1000, "hidden_size": 256, "num_hidden_layers": 4,
         "num_attention_heads": 8, "intermediate_size": 1024,
         "max_position_embeddings": 512, "pad_token_id": 0, "num_labels": 2}
_LM = {**_TEXT, "use_cache": False, "bos_token_id": 1, "eos_token_id": 2}


def _hf(config: str, model: str, **kw: Any) -> Build:
    def build() -> nn.Module:
        import transformers

        cfg = getattr(transformers, config)(**kw)
        cls = getattr(transformers, model)
        attn = "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return cls._from_config(cfg, attn_implementation=attn).eval()
    return build


def _text(config: str, model: str, **kw: Any) -> Build:
    return _hf(config, model, **{**_TEXT, **kw})


def _lm(config: str, model: str, **kw: Any) -> Build:
    return _hf(config, model, **{**_LM, **kw})


def _gpt2_names(kw: dict[str, Any]) -> dict[str, Any]:
    names = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer",
             "num_attention_heads": "n_head", "intermediate_size": "n_inner",
             "max_position_embeddings": "n_positions"}
    return {names.get(k, k): v for k, v in kw.items()}


def _vision(config: str, model: str, **kw: Any) -> Build:
    build = _hf(config, model, num_labels=10, **kw)

    def scaled() -> nn.Module:
        # transformers' initialisation for some CNNs (MobileNetV2, EfficientNet) shrinks
        # activations to 1e-28 or less by the logits, where no comparison means anything;
        # He-normal weights keep them O(1).
        model = build()
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                                   * (2.0 / fan_in) ** 0.5)
                elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                    m.weight.fill_(1.0)  # some inits draw these near 0, as for a Linear
                    m.bias.zero_()
        return model
    return scaled


def _ctr(name: str) -> Build:
    def build() -> nn.Module:
        from slimkit.tasks.ctr.models import DCNv2, DeepFM

        torch.manual_seed(0)
        cls = {"deepfm": DeepFM, "dcnv2": DCNv2}[name]
        return cls([1000, 500, 200, 100, 50, 20], 300).eval()
    return build


TEXT: dict[str, Build] = {
    "bert": _text("BertConfig", "BertForSequenceClassification"),
    "roberta": _text("RobertaConfig", "RobertaForSequenceClassification"),
    "distilbert": _hf("DistilBertConfig", "DistilBertForSequenceClassification",
                      vocab_size=1000, dim=256, n_layers=4, n_heads=8, hidden_dim=1024,
                      max_position_embeddings=512, num_labels=2),
    "albert": _text("AlbertConfig", "AlbertForSequenceClassification", embedding_size=128),
    "electra": _text("ElectraConfig", "ElectraForSequenceClassification", embedding_size=128),
    "mpnet": _text("MPNetConfig", "MPNetForSequenceClassification"),
    "deberta-v2": _text("DebertaV2Config", "DebertaV2ForSequenceClassification"),
    "modernbert": _text("ModernBertConfig", "ModernBertForSequenceClassification"),
    "t5-encoder": _hf("T5Config", "T5EncoderModel", vocab_size=1000, d_model=256, d_kv=32,
                      num_heads=8, d_ff=1024, num_layers=4),
    "gpt2": _hf("GPT2Config", "GPT2LMHeadModel", **_gpt2_names(_LM)),
    "gpt-neox": _lm("GPTNeoXConfig", "GPTNeoXForCausalLM"),
    "bloom": _hf("BloomConfig", "BloomForCausalLM", vocab_size=1000, hidden_size=256, n_layer=4,
                 n_head=8, use_cache=False),
    "opt": _lm("OPTConfig", "OPTForCausalLM", ffn_dim=1024, word_embed_proj_dim=256),
    "llama": _lm("LlamaConfig", "LlamaForCausalLM"),
    "mistral": _lm("MistralConfig", "MistralForCausalLM", num_key_value_heads=2),
    "qwen2": _lm("Qwen2Config", "Qwen2ForCausalLM", num_key_value_heads=2),
    "qwen3": _lm("Qwen3Config", "Qwen3ForCausalLM", num_key_value_heads=2, head_dim=32),
    "phi3": _lm("Phi3Config", "Phi3ForCausalLM", num_key_value_heads=4),
    "gemma": _lm("GemmaConfig", "GemmaForCausalLM", num_key_value_heads=1, head_dim=32),
    "falcon": _lm("FalconConfig", "FalconForCausalLM", new_decoder_architecture=True,
                  num_kv_heads=2, ffn_hidden_size=1024),
    "stablelm": _lm("StableLmConfig", "StableLmForCausalLM", num_key_value_heads=8),
}

_RESNET = {"embedding_size": 32, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2]}
VISION: dict[str, Build] = {
    "resnet": _vision("ResNetConfig", "ResNetForImageClassification", layer_type="bottleneck",
                      **_RESNET),
    "resnet-basic": _vision("ResNetConfig", "ResNetForImageClassification",
                            layer_type="basic", **_RESNET),
    "convnext": _vision("ConvNextConfig", "ConvNextForImageClassification",
                        hidden_sizes=[48, 96, 192, 384], depths=[2, 2, 4, 2]),
    "mobilenet-v2": _vision("MobileNetV2Config", "MobileNetV2ForImageClassification",
                            depth_multiplier=1.0),
    "efficientnet": _vision("EfficientNetConfig", "EfficientNetForImageClassification",
                            image_size=IMAGE, width_coefficient=1.0, depth_coefficient=1.0,
                            hidden_dim=1280),
    "regnet": _vision("RegNetConfig", "RegNetForImageClassification",
                      hidden_sizes=[48, 96, 240, 528], depths=[1, 2, 4, 2], groups_width=24),
    "swin": _vision("SwinConfig", "SwinForImageClassification", image_size=IMAGE,
                    embed_dim=48, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24], window_size=5),
    "vit": _vision("ViTConfig", "ViTForImageClassification", image_size=IMAGE, patch_size=16,
                   hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                   intermediate_size=1024),
    "deit": _vision("DeiTConfig", "DeiTForImageClassification", image_size=IMAGE,
                    patch_size=16, hidden_size=256, num_hidden_layers=4,
                    num_attention_heads=8, intermediate_size=1024),
    "dinov2": _vision("Dinov2Config", "Dinov2ForImageClassification", image_size=IMAGE,
                      patch_size=16, hidden_size=256, num_hidden_layers=4,
                      num_attention_heads=8),
    "poolformer": _vision("PoolFormerConfig", "PoolFormerForImageClassification",
                          hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 4, 2]),
    "convnextv2": _vision("ConvNextV2Config", "ConvNextV2ForImageClassification",
                          hidden_sizes=[48, 96, 192, 384], depths=[2, 2, 4, 2]),
}

RECSYS: dict[str, Build] = {"deepfm": _ctr("deepfm"), "dcnv2": _ctr("dcnv2")}

ZOO: dict[str, Build] = {**TEXT, **VISION, **RECSYS}


def inputs_for(name: str, model: nn.Module, batch: int, seed: int = 0) -> tuple[Any, ...]:
    """Example inputs of `model` (zoo entry `name`) at `batch`."""
    g = torch.Generator().manual_seed(seed)
    if name in VISION:
        return (torch.randn(batch, 3, IMAGE, IMAGE, generator=g),)
    if name in RECSYS:
        dims = [1000, 500, 200, 100, 50, 20]
        sparse = torch.stack([torch.randint(0, d, (batch,), generator=g) for d in dims], 1)
        return sparse, torch.randint(0, 300, (batch, 5), generator=g)
    ids = torch.randint(3, 1000, (batch, SEQ), generator=g)
    # Only where the second positional argument is the mask (GPT-2 takes the cache there).
    second = list(inspect.signature(model.forward).parameters)[1]
    return (ids, torch.ones_like(ids)) if second == "attention_mask" else (ids,)
