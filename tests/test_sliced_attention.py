"""SlicedMultiheadAttention computes what nn.MultiheadAttention computes (so swapping it in before
cutting heads changes nothing), and structured pruning then removes heads for real."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.nn.sliced_attention import SlicedMultiheadAttention
from slimkit.tasks.inputs import InputsTask


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("need_weights", [False, True])
def test_same_outputs_as_torch(batch_first: bool, need_weights: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(24, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    sliced = SlicedMultiheadAttention.from_torch(mha).eval()
    b, lq, ls = 3, 5, 7
    shape = (lambda n: (b, n, 24)) if batch_first else (lambda n: (n, b, 24))
    q, kv = torch.randn(shape(lq)), torch.randn(shape(ls))
    pad = torch.zeros(b, ls, dtype=torch.bool)
    pad[0, -2:] = True
    causal = torch.triu(torch.ones(lq, ls, dtype=torch.bool), 1)
    for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": causal},
                   {"attn_mask": torch.randn(lq, ls), "key_padding_mask": pad},
                   {"average_attn_weights": False}):
        want = mha(q, kv, kv, need_weights=need_weights, **kwargs)
        got = sliced(q, kv, kv, need_weights=need_weights, **kwargs)
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
        if need_weights:
            torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
        else:
            assert got[1] is None and want[1] is None
    x = torch.randn(lq, 24)  # unbatched
    torch.testing.assert_close(sliced(x, x, x)[0], mha(x, x, x)[0], atol=1e-5, rtol=1e-5)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 32)
        self.attn = nn.MultiheadAttention(32, 8, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.attn(h, h, h)[0]  # need_weights defaults to True, as users leave it
        return self.head((h + self.ff(h)).mean(1))


def test_structured_pruning_removes_heads_of_torch_attention(tmp_path) -> None:
    torch.manual_seed(0)
    model = Encoder().eval()
    model.slimkit_spec = {"builder": f"{__name__}:Encoder", "kwargs": {}}
    x = (torch.randn(4, 9, 6),)
    rec = slimkit.compress_(model, slimkit.Plan([slimkit.Structured(ratio=0.5)]),
                            slimkit.Context(task=InputsTask([x])))
    attn = model.attn
    assert isinstance(attn, SlicedMultiheadAttention)
    # Half the heads and half the residual width (the head dimension stays whole).
    assert (attn.num_heads, attn.head_dim, attn.embed_dim) == (4, 4, 16)
    assert attn.in_proj_weight.shape == (48, 16) and attn.out_proj.weight.shape == (16, 16)
    locked = [g["reason"] for g in rec[0].info["analysis"]["locked"]]
    assert not any("reshaped" in r or "unknown" in r for r in locked), locked
    assert rec[0].info["analysis"]["probe_failed"] == []
    with torch.no_grad():
        out = model(*x)
        slimkit.save(model, tmp_path / "m")
        loaded = slimkit.load(tmp_path / "m", model=Encoder()).model
        torch.testing.assert_close(loaded(*x), out)
