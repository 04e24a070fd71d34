"""Model families slimkit builds and rebuilds: Hugging Face transformers models (tiny seeded configs
and the real all-MiniLM-L6-v2). Importing this package does not import transformers.
"""

from .hf import (
    ARCHS,
    MainOutput,
    attach_spec,
    example_inputs,
    first_tensor,
    hf_spec,
    is_hf_model,
    tiny_config,
    tiny_model,
)
from .minilm import encode, load_minilm, minilm_path, minilm_tokenizer
from .pooling import masked_mean_pool, mean_pool

__all__ = ["ARCHS", "MainOutput", "attach_spec", "encode", "example_inputs", "first_tensor",
           "hf_spec", "is_hf_model", "load_minilm", "masked_mean_pool", "mean_pool", "minilm_path",
           "minilm_tokenizer", "tiny_config", "tiny_model"]
