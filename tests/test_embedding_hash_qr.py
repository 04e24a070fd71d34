"""truncate.embedding_hash and truncate.embedding_qr: hot rows exact, sizes and bytes as asked,
bag semantics of nn.EmbeddingBag, fitted init better than random, save/load, ONNX parity,
composition with quantize.embedding, recovery, and one-line errors for bad options."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import Context, Plan, lookup
from slimkit.core.errors import ConfigError, SlimkitError
from slimkit.methods.truncate.embedding_hash import EmbeddingHash, bucket_means
from slimkit.methods.truncate.embedding_qr import EmbeddingQR, fit_qr
from slimkit.nn.hashed_embedding import HashedEmbedding, hash_rows, stored_bytes
from slimkit.nn.qr_embedding import QREmbedding
from slimkit.tasks.ctr import CTRTask

CARDS = [400, 300, 5]
REBUILT = ("embeddings.0", "embeddings.1", "bag")


@pytest.fixture(scope="module")
def task() -> CTRTask:
    return CTRTask.synthetic(n_rows=3000, cardinalities=CARDS, bag_cardinality=300, bag_len=3,
                             seed=0)


@pytest.fixture
def model(task: CTRTask) -> nn.Module:
    torch.manual_seed(0)
    return task.build_model("deepfm", embed_dim=8, hidden=[16]).eval()


def _compress(model: nn.Module, task: CTRTask, *steps: slimkit.MethodConfig) -> dict:
    records = slimkit.compress_(model, Plan(steps=steps), Context(task=task, seed=0))
    return records[0].info


def _train_counts(task: CTRTask, field: int) -> torch.Tensor:
    ids = task.split("train")["sparse"][:, field]
    return torch.bincount(ids, minlength=task.field_dims[field])


@pytest.mark.parametrize("config", [EmbeddingHash(budget=0.25),
                                    EmbeddingQR(budget=0.25, hot=0.3, op="add")],
                         ids=["hash", "qr"])
def test_hot_rows_are_the_most_read_and_reproduced_exactly(model, task, config) -> None:
    original = copy.deepcopy(model)
    info = _compress(model, task, config)
    assert set(info["tables"]) == set(REBUILT)
    assert info["skipped"]["linear.0"] == "1 wide < min_dim"
    assert info["skipped"]["embeddings.2"] == "6 rows < min_rows"
    for field in (0, 1):
        new = model.embeddings[field]
        weight = original.embeddings[field].weight
        ids = torch.arange(new.num_embeddings)
        slot = new.slot.long()
        hot = ids[(slot < new.hot) if isinstance(new, HashedEmbedding) else (slot >= 0)]
        assert len(hot) == new.hot > 0
        assert torch.equal(new(hot), weight[hot])  # bit-exact copies
        counts = _train_counts(task, field)
        # The hot ids are the most read: none of the others is read more often.
        cold = torch.ones(len(ids), dtype=torch.bool)
        cold[hot] = False
        cold[0] = False
        assert counts[hot].min() >= counts[cold].max()
        assert torch.equal(new(torch.tensor([0, 0])), weight[[0, 0]])  # the padding row
    assert all(t["init_error"] < 1.0 for t in info["tables"].values())


def test_sizes_and_bytes_follow_buckets_collisions_and_budget(model, task) -> None:
    info = _compress(copy.deepcopy(model), task, EmbeddingHash(buckets=30, hot=0.5))
    t = info["tables"]["embeddings.0"]
    # 30 hot + 30 bucket rows of 8 fp32, an int16 id map over 401 ids, the padding row.
    assert (t["hot"], t["buckets"]) == (30, 30)
    assert t["bytes_after"] == 60 * 8 * 4 + 401 * 2 + 8 * 4
    info = _compress(copy.deepcopy(model), task, EmbeddingHash(buckets=50, hot=0.0))
    assert info["tables"]["embeddings.0"]["bytes_after"] == 50 * 8 * 4 + 8 * 4  # no id map
    qr = copy.deepcopy(model)
    _compress(qr, task, EmbeddingQR(collisions=20))
    q = qr.embeddings[0]
    assert isinstance(q, QREmbedding) and (q.q.num_embeddings, q.r.num_embeddings) == (21, 20)
    assert stored_bytes(q) == (21 + 20) * 8 * 4 + 8 * 4
    for config in (EmbeddingHash(budget=0.2), EmbeddingHash(budget=0.1, hot=0.0),
                   EmbeddingQR(budget=0.2), EmbeddingQR(budget=0.3, hot=0.4)):
        info = _compress(copy.deepcopy(model), task, config)
        for t in info["tables"].values():
            fp32 = t["rows"] * 8 * 4
            assert t["bytes_before"] == fp32 and t["bytes_after"] <= config.budget * fp32
            if isinstance(config, EmbeddingHash):  # hashing fills the budget to within a row
                assert t["bytes_after"] > config.budget * fp32 - 8 * 4
        assert info["ratio"] <= config.budget


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_bags_behave_as_embedding_bag_with_2d_input_and_offsets(mode: str) -> None:
    torch.manual_seed(0)
    for new in (HashedEmbedding(50, 4, hot=5, buckets=7, mode=mode, padding_idx=0),
                HashedEmbedding(50, 4, hot=0, buckets=7, mode=mode, padding_idx=0),
                QREmbedding(50, 4, collisions=8, op="mult", hot=3, mode=mode, padding_idx=0)):
        nn.init.normal_(next(new.children()).weight)
        if isinstance(new, QREmbedding):
            nn.init.normal_(new.r.weight)
            new.slot[[4, 9, 11]] = torch.tensor([0, 1, 2], dtype=new.slot.dtype)
        elif new.hot:
            new.slot.copy_(torch.randint(0, 12, (50,), dtype=new.slot.dtype))
        dense = nn.EmbeddingBag(50, 4, mode=mode, padding_idx=0)
        with torch.no_grad():
            dense.weight.copy_(new.vectors(torch.arange(50)))
        bags = torch.tensor([[3, 0, 9], [0, 0, 0], [11, 4, 49]])
        torch.testing.assert_close(new(bags), dense(bags))
        flat, offsets = torch.tensor([3, 0, 9, 11, 4, 0, 7]), torch.tensor([0, 3, 3, 6])
        torch.testing.assert_close(new(flat, offsets), dense(flat, offsets))


def test_fitted_init_beats_random_init() -> None:
    torch.manual_seed(0)
    n, dim = 600, 8
    weight = torch.randn(n, dim) * 0.1 + torch.randn(1, dim) * 0.05
    w = torch.distributions.Pareto(1.0, 1.2).sample((n,))  # skewed counts

    def error(approx: torch.Tensor) -> float:
        return float((w * (weight - approx).pow(2).sum(1)).sum() / (w * weight.pow(2).sum(1)).sum())

    ids = torch.arange(n)
    for op in ("mult", "add"):
        q, r = fit_qr(weight, w, 25, op)
        fitted = q[ids // 25] * r[ids % 25] if op == "mult" else q[ids // 25] + r[ids % 25]
        q0, r0 = torch.randn_like(q) * 0.1, torch.randn_like(r) * 0.1
        rand = q0[ids // 25] * r0[ids % 25] if op == "mult" else q0[ids // 25] + r0[ids % 25]
        assert error(fitted) < 0.9 * min(1.0, error(rand))
    rows = ids % 40
    means = bucket_means(weight, rows, 40, w)
    assert error(means[rows]) < 0.9 * min(1.0, error(torch.randn(40, dim)[rows] * 0.1))
    # Weighted: the heaviest id of each bucket is reproduced better than under a plain mean.
    plain = bucket_means(weight, rows, 40, torch.ones(n))
    assert error(means[rows]) < error(plain[rows])


class _OneTable(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.emb = nn.Embedding.from_pretrained(weight, freeze=False)

    def forward(self, sparse: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
        return self.emb(sparse[:, 0]).sum(-1)


@pytest.mark.parametrize("config", [EmbeddingQR(collisions=20, op="mult"),
                                    EmbeddingQR(collisions=20, op="add"),
                                    EmbeddingHash(buckets=40, hot=0.0, salt=7)],
                         ids=["qr-mult", "qr-add", "hash"])
def test_a_table_of_that_structure_is_rebuilt_exactly(task, config) -> None:
    """Rows that are exactly Q[i // m] op R[i % m] (or equal within each hash bucket) must come
    back exact: the fit and the forward agree on how an id is split."""
    torch.manual_seed(0)
    ids = torch.arange(task.field_dims[0])
    q, r = torch.randn(21, 4), torch.randn(20, 4)
    if isinstance(config, EmbeddingHash):
        weight = torch.randn(40, 4)[hash_rows(ids, 40, 7)]
    else:
        weight = q[ids // 20] * r[ids % 20] if config.op == "mult" else q[ids // 20] + r[ids % 20]
    model = _OneTable(weight)
    info = _compress(model, task, config)
    assert info["tables"]["emb"]["init_error"] < 1e-8
    torch.testing.assert_close(model.emb(ids), weight, atol=1e-5, rtol=1e-4)


def test_save_load_round_trip_and_composed_quantization(model, task, tmp_path) -> None:
    quant = lookup("quantize.embedding")[0](bits=8)
    _compress(model, task, EmbeddingHash(budget=0.25, targets=slimkit.Targets(
        names=("embeddings.0", "bag"))), EmbeddingQR(budget=0.25, hot=0.2), quant)
    assert isinstance(model.embeddings[0], HashedEmbedding)
    assert isinstance(model.embeddings[1], QREmbedding)
    assert type(model.embeddings[0].table).__name__ == "QuantizedEmbedding"
    assert type(model.embeddings[1].q).__name__ == "QuantizedEmbedding"
    path = slimkit.save(model, tmp_path / "art")
    loaded = slimkit.load(path).model
    x = task.example_inputs(64)
    with torch.inference_mode():
        assert torch.equal(model(*x), loaded(*x))


@pytest.mark.parametrize("steps", [
    (EmbeddingHash(budget=0.25),), (EmbeddingHash(buckets=40, hot=0.0),),
    (EmbeddingQR(budget=0.3, hot=0.3),), (EmbeddingQR(collisions=20, op="add"),),
    (EmbeddingHash(budget=0.25), "int8")], ids=["hash", "hash-nomap", "qr-hot", "qr-add",
                                                 "hash-int8"])
def test_onnx_export_matches_onnx_runtime(model, task, steps, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from slimkit.export.onnx import check_parity, export_onnx

    steps = tuple(lookup("quantize.embedding")[0](bits=8) if s == "int8" else s for s in steps)
    _compress(model, task, *steps)
    x = task.example_inputs(32)
    x[0][:3, 0] = 0  # padding ids, in fields and bags
    x[1][:2] = 0
    path = export_onnx(model, x, tmp_path / "m.onnx")
    parity = check_parity(model, path, task.example_inputs(77), atol=1e-5)
    assert parity.passed, parity


def test_recovery_distills_from_the_uncompressed_model(model, task) -> None:
    config = EmbeddingHash(budget=0.25, recover_epochs=0.2)
    assert config.requires() == frozenset({"data", "teacher"})
    assert EmbeddingQR().requires() == frozenset({"data"})
    before = copy.deepcopy(model)
    _compress(before, task, EmbeddingHash(budget=0.25))
    info = _compress(model, task, config)
    assert "final_loss" in info
    assert not torch.equal(model.embeddings[0].table.weight, before.embeddings[0].table.weight)


def test_plan_yaml_round_trip() -> None:
    text = ("steps:\n- {method: truncate.embedding_hash, budget: 0.125, hot: 0.25}\n"
            "- {method: truncate.embedding_qr, collisions: 31, op: add, recover_epochs: 1}\n")
    plan = Plan.from_yaml(text)
    assert plan.steps == (EmbeddingHash(budget=0.125, hot=0.25),
                          EmbeddingQR(collisions=31, op="add", recover_epochs=1.0))
    assert Plan.from_yaml(plan.to_yaml()) == plan


@pytest.mark.parametrize(("text", "message"), [
    ("{method: truncate.embedding_hash, budget: 1.5}",
     "steps[0].budget: expected a value in (0.0, 1.0], got 1.5"),
    ("{method: truncate.embedding_hash, budget: 0.1, buckets: 10}",
     "steps[0].buckets: expected unset when budget is set, got 10"),
    ("{method: truncate.embedding_hash, hot: 1.0}", "steps[0].hot: expected a value in [0.0, 1.0)"),
    ("{method: truncate.embedding_hash, buckets: 0}", "steps[0].buckets: expected a value in"),
    ("{method: truncate.embedding_qr, collisions: 1}",
     "steps[0].collisions: expected a value in [2,"),
    ("{method: truncate.embedding_qr, op: mul}", "steps[0].op: expected one of 'mult', 'add'"),
    ("{method: truncate.embedding_qr, min_rows: 1}", "steps[0].min_rows: expected a value in"),
    ("{method: truncate.embedding_qr, recover_epochs: -1}", "steps[0].recover_epochs"),
])
def test_bad_options_are_one_line_naming_field_and_value(text: str, message: str) -> None:
    with pytest.raises(SlimkitError) as info:
        Plan.from_yaml(f"steps: [{text}]")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_impossible_budget_and_no_table_are_refused_in_one_line(model, task) -> None:
    with pytest.raises(ConfigError, match=r"^budget: expected a larger fraction: 401 x 8 needs"):
        _compress(copy.deepcopy(model), task, EmbeddingQR(budget=0.02))
    with pytest.raises(ConfigError, match=r"^budget: .* needs room for its id map.*got 0\.01$"):
        _compress(copy.deepcopy(model), task, EmbeddingHash(budget=0.01))
    with pytest.raises(SlimkitError, match="no table rebuilt"):
        _compress(copy.deepcopy(model), task, EmbeddingHash(min_rows=10_000))
    with pytest.raises(SlimkitError, match="targets match no"):
        _compress(copy.deepcopy(model), task, EmbeddingHash(targets=slimkit.Targets(
            names=("tower.*",))))


def test_hash_is_pinned() -> None:
    """A table saved with hot = 0 stores no id map: the hash is part of the artifact format."""
    ids = torch.tensor([0, 1, 2, 12345, 2**31 - 2])
    assert hash_rows(ids, 1000, 0).tolist() == [0, 114, 228, 972, 533]
    assert hash_rows(torch.tensor([5]), 97, 3).tolist() == [61]


@pytest.mark.parametrize("op", ["mult", "add"])
def test_fits_by_blocks_of_rows_equal_one_block(op, monkeypatch) -> None:
    """QR's fit and the bucket means pass over the table a block of rows at a time (a 10M-row
    table in fp64 would not fit twice): the block size must not change the result."""
    from slimkit.methods.truncate import embedding_hash, embedding_qr

    torch.manual_seed(1)
    weight, w = torch.randn(1003, 6), torch.rand(1003) + 0.1
    whole = fit_qr(weight, w, 17, op, iterations=12)
    means = bucket_means(weight, torch.arange(1003) % 50, 50, w)
    monkeypatch.setattr(embedding_qr, "BLOCK_ROWS", 7 * 17 + 3)  # 7 Q rows a block, the last short
    monkeypatch.setattr(embedding_hash, "BLOCK_ROWS", 101)
    blocked = fit_qr(weight, w, 17, op, iterations=12)
    for a, b in zip(whole, blocked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bucket_means(weight, torch.arange(1003) % 50, 50, w), means)
