"""Entropy-coded tensors inside artifacts: Huffman chosen when smaller, exact decoding, the
older dense/bitmap entries still readable, and tampered coded streams refused."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from torch import nn

import slimkit
from slimkit.export import MANIFEST, WEIGHTS
from slimkit.export.encoding import decode, digest, encode
from slimkit.nn.int8_linear import DynamicInt8Linear


def _sparse_codes(numel: int = 20_000, density: float = 0.1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(numel, generator=gen) < density
    return torch.randint(1, 32, (numel,), dtype=torch.uint8, generator=gen) * keep


def test_sparse_cluster_indices_take_the_deep_compression_form() -> None:
    codes = _sparse_codes().reshape(100, 200)
    parts, meta = encode("w", codes)
    assert meta["encoding"] == "huffman_sparse" and list(parts) == ["w::coded"]
    stored = sum(p.numel() for p in parts.values())
    bitmap_bytes = int((codes != 0).sum()) + codes.numel() // 8
    assert stored < bitmap_bytes
    assert meta["bits_per_weight"] == pytest.approx(8 * stored / codes.numel(), abs=1e-3)
    assert set(meta["streams"]) == {"values", "gaps"}
    assert 0 <= meta["entropy_gap_pct"] < 2.0
    out = decode("w", meta, parts)
    assert out.dtype == torch.uint8 and torch.equal(out, codes)


def test_dense_skewed_int8_weights_take_plain_huffman() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    with torch.no_grad():
        linear.weight.normal_()  # bell-shaped: INT8 codes have ~7 bits of entropy
    q = DynamicInt8Linear.from_linear(linear).weight
    parts, meta = encode("q", q)
    assert meta["encoding"] == "huffman" and meta["bits_per_weight"] < 7.6
    assert parts["q::coded"].numel() < q.numel()
    assert torch.equal(decode("q", meta, parts), q)
    uniform = torch.randint(-127, 128, (64, 64), dtype=torch.int8)
    assert encode("u", uniform)[1]["encoding"] == "dense"  # nothing to gain


def test_float_tensors_keep_dense_and_bitmap() -> None:
    t = torch.randn(40, 30)
    assert encode("f", t)[1]["encoding"] == "dense"
    t[t.abs() < 1.0] = 0
    parts, meta = encode("f", t)
    assert meta["encoding"] == "bitmap" and torch.equal(decode("f", meta, parts), t)


def test_entries_written_before_coding_still_decode() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    old = {"shape": [3, 4], "dtype": "float32", "encoding": "dense", "sha256": {"x": digest(t)}}
    assert torch.equal(decode("x", old, {"x": t}), t)


def test_artifact_round_trip_with_coded_int8_weights(tmp_path) -> None:
    from slimkit.tasks.vision.models import SmallCNN

    model = SmallCNN(channels=(4, 8), hidden=32)
    slimkit.compress_(model, slimkit.Plan(steps=(slimkit.Magnitude(sparsity=0.9),
                                                 slimkit.DynamicInt8(fuse_relu=False))),
                      slimkit.Context())
    path = slimkit.save(model, tmp_path / "art")
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["tensors"]["fc1.weight"]["encoding"].startswith("huffman")
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(slimkit.load(path).model(x), model(x))


def test_tampered_coded_artifact_is_refused(tmp_path) -> None:
    from slimkit.methods.quantize.cluster import Cluster
    from slimkit.tasks.vision.models import SmallCNN

    model = SmallCNN(channels=(4, 8), hidden=32)
    slimkit.compress_(model, slimkit.Plan(steps=(slimkit.Magnitude(sparsity=0.9),
                                                 Cluster(epochs=0))), slimkit.Context())
    path = slimkit.save(model, tmp_path / "art")
    tensors = safetensors.torch.load_file(str(path / WEIGHTS))
    assert any(k.endswith("::coded") for k in tensors)
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-3] ^= 0x55  # the last tensor in the file
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(slimkit.ArtifactError):
        slimkit.load(path)


def test_changed_coded_part_fails_its_checksum() -> None:
    parts, meta = encode("w", _sparse_codes())
    parts["w::coded"] = parts["w::coded"].clone()
    parts["w::coded"][-1] ^= 0x55
    with pytest.raises(slimkit.ArtifactError, match="fails its checksum"):
        decode("w", meta, parts)


@pytest.mark.parametrize("blob,entry", [
    (lambda b: b[:-1], None),
    (lambda b: torch.cat([b[:-8], b[-8:] ^ 0xFF]), None),
    (None, lambda m: m["streams"]["values"].update(count=m["streams"]["values"]["count"] - 1)),
    (None, lambda m: m["streams"]["gaps"].update(bytes=m["streams"]["gaps"]["bytes"] - 1)),
    (None, lambda m: m.update(max_gap=m["max_gap"] - 1)),
    (None, lambda m: m.update(encoding="huffman_v9")),
])
def test_forged_coded_stream_does_not_decode(blob, entry) -> None:
    """A forger who also rewrites the checksums still cannot make a wrong tensor decode."""
    parts, meta = encode("w", _sparse_codes())
    if blob is not None:
        parts["w::coded"] = blob(parts["w::coded"].clone())
        meta["sha256"]["w::coded"] = digest(parts["w::coded"])
    if entry is not None:
        entry(meta)
    with pytest.raises(slimkit.ArtifactError):
        decode("w", meta, parts)
