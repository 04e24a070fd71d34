"""quantize.cluster (Deep Compression weight sharing): k-means math, the grouped centroid
gradient, zeros kept, fine-tuning with fixed assignments, and exact save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit
from slimkit.methods.quantize.cluster import Cluster, stream_report
from slimkit.nn.clustered_layer import (
    ClusteredLayer,
    assign,
    centroid_gradient,
    cluster_weight,
    kmeans_1d,
    linear_init,
)
from slimkit.tasks.vision.models import SmallCNN


def test_linear_init_spans_min_to_max() -> None:
    c = linear_init(torch.tensor([-2.0, 0.5, 3.0, 1.0]), 6)
    assert torch.allclose(c, torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0], dtype=c.dtype))


def test_assignment_is_nearest_centroid() -> None:
    centroids = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    values = torch.tensor([-5.0, -0.6, -0.4, 0.9, 1.1, 9.0], dtype=torch.float64)
    assert assign(values, centroids).tolist() == [0, 0, 1, 1, 2, 2]
    x = torch.randn(1000, dtype=torch.float64)
    brute = (x[:, None] - centroids[None]).abs().argmin(dim=1)
    assert torch.equal(assign(x, centroids), brute)


def test_kmeans_converges_to_cluster_means() -> None:
    torch.manual_seed(0)
    x = torch.cat([torch.randn(300) * 0.1 - 2, torch.randn(300) * 0.1, torch.randn(300) * 0.1 + 3])
    centroids, labels = kmeans_1d(x, 3)
    assert torch.all(centroids[1:] > centroids[:-1])
    for k in range(3):  # a fixed point of Lloyd: each centroid is the mean of its members
        assert torch.isclose(centroids[k], x.double()[labels == k].mean())
    assert torch.allclose(centroids, torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64),
                          atol=0.05)


def test_zeros_are_not_clustered_and_stay_zero() -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    w[w.abs() < 0.8] = 0
    indices, codebook = cluster_weight(w, bits=4)
    assert indices.dtype == torch.uint8 and codebook.numel() == 15
    assert torch.equal(indices == 0, w == 0)
    layer = ClusteredLayer("linear", [64, 64], 4)
    layer.set_codes(indices)
    layer.codebook.copy_(codebook)
    assert layer.indices.shape == (64, 32)  # 15 centroids + the zero: 4 bits a weight
    assert torch.equal(layer.codes(), indices)
    dense = layer.dense_weight()
    assert torch.all(dense[w == 0] == 0)
    assert (dense - w).norm() < 0.1 * w.norm()  # 15 shared values approximate the weights


def test_centroid_gradient_is_sum_of_member_gradients() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(20, 8)
    with torch.no_grad():
        linear.weight[linear.weight.abs() < 0.05] = 0
    layer = ClusteredLayer.from_module(linear, bits=3)
    layer.set_trainable(True)
    x = torch.randn(16, 20)
    layer(x).pow(2).sum().backward()
    # The same loss through an ordinary Linear holding the shared weights gives dL/dW.
    ref = nn.Linear(20, 8)
    with torch.no_grad():
        ref.weight.copy_(layer.dense_weight())
        ref.bias.copy_(layer.bias)
    ref(x).pow(2).sum().backward()
    expected = centroid_gradient(ref.weight.grad, layer.codes(), 7)
    assert torch.allclose(layer.codebook.grad, expected, atol=1e-5)
    manual = torch.stack([ref.weight.grad[layer.codes() == k + 1].sum() for k in range(7)])
    assert torch.allclose(expected, manual, atol=1e-5)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(channels=(4, 8), hidden=16).eval()


def test_cluster_step_keeps_zeros_and_saves_exactly(tmp_path) -> None:
    model = _cnn()
    ctx = slimkit.Context()
    slimkit.compress_(model, slimkit.Plan(steps=(
        slimkit.Magnitude(sparsity=0.6), Cluster(conv_bits=6, linear_bits=3,
                                                 bits={"fc2": 4}, epochs=0))), ctx)
    assert {m.bits for m in model.modules() if isinstance(m, ClusteredLayer)} == {6, 3, 4}
    assert model.fc2.bits == 4 and model.fc1.bits == 3 and model.conv1.bits == 6
    assert float((model.fc1.codes() == 0).float().mean()) == pytest.approx(0.6, abs=0.01)
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        out = model(x)
    path = slimkit.save(model, tmp_path / "art")
    loaded = slimkit.load(path)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), out)
    entry = loaded.manifest["tensors"]["fc1.indices"]
    assert entry["encoding"].startswith("huffman") and entry["bits_per_weight"] < 2.0
    assert entry["shape"] == list(model.fc1.weight_shape)  # a byte an index before coding
    # Resident: 3 bits an index, packed per output row.
    assert loaded.model.fc1.indices.shape == (16, -(-model.fc1.weight_shape[1] * 3 // 8))
    twin = copy.deepcopy(loaded.model)
    with torch.inference_mode():
        assert torch.equal(twin(x), out)


def test_finetuning_moves_centroids_only(tiny_task, make_model) -> None:
    model = make_model()
    ctx = slimkit.Context(task=tiny_task)
    slimkit.compress_(model, slimkit.Plan(steps=(Cluster(linear_bits=4, epochs=0),)), ctx)
    before = {n: (m.codes(), m.codebook.clone()) for n, m in model.named_modules()
              if isinstance(m, ClusteredLayer)}
    again = make_model()
    records = slimkit.compress_(again, slimkit.Plan(steps=(
        Cluster(linear_bits=4, epochs=0.5, lr=1e-3, batch_size=256),)), ctx)
    changed = 0
    for name, (indices, codebook) in before.items():
        layer = again.get_submodule(name)
        assert torch.equal(layer.codes(), indices)  # assignments fixed
        assert "codebook" in layer._buffers and not layer.codebook.requires_grad
        changed += int(not torch.equal(layer.codebook, codebook))
    assert changed == len(before)
    info = records[0].info
    assert 0 < info["bits_per_weight"] < 4 and abs(info["entropy_gap_pct"]) < 5


def test_stream_report_matches_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    keep = torch.rand(50_000, generator=gen) < 0.1
    indices = torch.randint(1, 32, (50_000,), dtype=torch.uint8, generator=gen) * keep
    report = stream_report(indices)
    assert report["nonzeros"] == int(keep.sum()) and report["form"] == "huffman_sparse"
    assert report["entropy_bits"] <= report["payload_bits"] <= 1.02 * report["entropy_bits"]
    assert report["bits_per_weight"] < 0.1 * 5 + 0.6  # ~5 bits per value, ~4 bits per gap


@pytest.mark.parametrize("field,value", [("conv_bits", 9), ("linear_bits", 0), ("iters", 0)])
def test_config_validation(field: str, value: int) -> None:
    with pytest.raises(slimkit.ConfigError, match=field):
        Cluster(**{field: value})
    with pytest.raises(slimkit.ConfigError, match="bits.fc"):
        Cluster(bits={"fc*": 12})
    plan = slimkit.Plan(steps=(Cluster(bits={"fc1": 4}, epochs=0.5),))
    assert slimkit.Plan.from_yaml(plan.to_yaml()) == plan
