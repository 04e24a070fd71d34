"""Multi-head attention whose heads can be removed: torch's nn.MultiheadAttention computes
head_dim = embed_dim // num_heads from the width of its input, so it cannot run with fewer heads
than its embedding width implies. This module keeps head_dim as its own attribute and the same
parameter names, computes the same function, and is what structured pruning swaps in before it
cuts heads.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..core.module_types import register_module_type


@register_module_type
class SlicedMultiheadAttention(nn.Module):
    """nn.MultiheadAttention's forward (self- or cross-attention, masks, need_weights) with
    q/k/v/o widths of num_heads * head_dim, independent of embed_dim."""

    # nn.TransformerEncoderLayer reads this to choose torch's fused fast path: never take it.
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True,
                 dropout: float = 0.0, batch_first: bool = False) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    @classmethod
    def replaces(cls, mha: nn.MultiheadAttention) -> bool:
        """Whether `mha` is a form this module reproduces (one in-projection, no extra k/v)."""
        return bool(mha._qkv_same_embed_dim and mha.bias_k is None and not mha.add_zero_attn)

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> SlicedMultiheadAttention:
        new = cls(mha.embed_dim, mha.num_heads, mha.head_dim, mha.in_proj_bias is not None,
                  float(mha.dropout), bool(mha.batch_first))
        new.load_state_dict(mha.state_dict())
        new.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)
        for (_, a), (_, b) in zip(new.named_parameters(), mha.named_parameters(), strict=True):
            a.requires_grad_(b.requires_grad)
        return new.train(mha.training)

    def args(self) -> dict[str, object]:
        """The constructor arguments that rebuild this module (for the swap edit)."""
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads,
                "head_dim": self.head_dim, "bias": self.in_proj_bias is not None,
                "dropout": self.dropout, "batch_first": self.batch_first}

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        # [L, B, E] from here on, as torch's functional form.
        length, batch, _ = query.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None \
            else (None, None, None)
        q, k, v = (self._heads(F.linear(x, w, b))
                   for x, w, b in ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v)))
        mask = self._mask(attn_mask, key_padding_mask, batch, length, k.shape[2], q.dtype)
        if is_causal and mask is None:
            mask = torch.full((length, k.shape[2]), float("-inf"), dtype=q.dtype,
                              device=q.device).triu(1)
        p = self.dropout if self.training else 0.0
        # The output always comes from SDPA, which marks the heads and their width for the
        # dependency analysis; the weights, when asked for, are computed beside it (a caller
        # that drops them leaves that branch dead: the analysis and ONNX export skip it).
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            probs = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            weights = probs.mean(1) if average_attn_weights else probs
        # [B, H, L, hd] -> [L, B, H * hd]
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(length, batch, -1))
        if unbatched:
            return out.squeeze(1), None if weights is None else weights.squeeze(0)
        return (out.transpose(0, 1) if self.batch_first else out), weights

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[L, B, H * hd] -> [B, H, L, hd]."""
        length, batch = x.shape[0], x.shape[1]
        return x.reshape(length, batch, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

    def _mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
              batch: int, length: int, source: int, dtype: torch.dtype) -> torch.Tensor | None:
        """One additive float mask broadcastable to [B, H, L, S] (True = not allowed)."""
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 3:  # [B * H, L, S]
                mask = mask.reshape(batch, -1, length, source)
        if key_padding_mask is not None:
            pad = _additive(key_padding_mask, dtype).reshape(batch, 1, 1, source)
            mask = pad if mask is None else mask + pad
        return mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf"))
    return mask.to(dtype)
