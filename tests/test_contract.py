"""Contract matrix: every method (rows) on every model (columns) runs, gives finite outputs of the
right shape, keeps a share of its baseline's quality, shrinks the artifact where it claims to, is
deterministic for a seed, survives save/load exactly, and its plan round-trips. Cells where a
method does not apply must be refused with one line naming the problem.

Columns: slimkit's CTR models (DeepFM, DCN-v2) on conftest's tiny synthetic task, a small CNN on
Fashion-MNIST, a tiny Llama-style causal transformer on a synthetic next-token task, and a "user
model" whose class and task live in tests/contract_models.py, not in slimkit. Each column's
baseline is trained once per module (seconds), so quality floors compare against a model that
has learned something."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest
import torch
from contract_models import (
    Column,
    cnn_column,
    ctr_column,
    main_output,
    transformer_column,
    user_column,
)

import slimkit
from slimkit.export import artifact_bytes
from slimkit.tasks.vision.data import ROOT as FASHION_MNIST

# A training budget that can actually recover: one epoch of the column's training split (8-40
# steps of 256 rows). A quarter epoch (2-4 steps) cannot repair a dropped block of a plain MLP
# tower (DCN-v2 kept AUC 0.51 after truncate.layers with it).
TRAIN = {"epochs": 1.0, "batch_size": 256}
METHODS = {
    "prune.magnitude": (slimkit.Magnitude(sparsity=0.7), True),
    "prune.sparsegpt": (slimkit.SparseGPT(sparsity=0.5, calibration_batches=2), True),
    "prune.wanda": (slimkit.Wanda(sparsity=0.5, calibration_batches=2), True),
    "prune.magnitude.gradual": (slimkit.Magnitude(sparsity=0.7, schedule="gradual",
                                                  update_every=2, **TRAIN), True),
    "quantize.dynamic_int8": (slimkit.DynamicInt8(), True),
    "quantize.embedding": (slimkit.EmbeddingQuant(bits=4), True),
    "distill.logits": (slimkit.LogitsKD(**TRAIN), False),
    "truncate.layers": (slimkit.Layers(container="tower", drop=1, recover="distill", **TRAIN),
                        True),
    "finetune": (slimkit.Finetune(**TRAIN), False),
    "prune.structured": (slimkit.Structured(ratio=0.5, steps=2, recover="finetune", **TRAIN),
                         True),
    "quantize.qat": (slimkit.QAT(**TRAIN), True),
    "quantize.cluster": (slimkit.Cluster(**TRAIN), True),
    "quantize.weight_only": (slimkit.WeightOnly(bits=4, group_size=16), True),
    "quantize.weight_only.gptq": (slimkit.WeightOnly(bits=3, group_size=32, algorithm="gptq",
                                                     calibration_batches=2), True),
    "quantize.binary": (slimkit.BinaryWeights(kind="xnor", **TRAIN), True),
    "quantize.mixed": (slimkit.MixedPrecision(budget=0.3), True),
    "quantize.embedding_budget": (slimkit.EmbeddingBudget(budget=0.3), True),
    "quantize.embedding_frequency": (slimkit.EmbeddingFrequency(budget=0.15), True),
    # The columns' tables have 40-201 rows: min_rows lets the rebuilders at them.
    "truncate.embedding_hash": (slimkit.EmbeddingHash(budget=0.3, min_rows=32), True),
    "truncate.embedding_qr": (slimkit.EmbeddingQR(budget=0.4, min_rows=32), True),
    "truncate.embedding_mixed_dim": (slimkit.EmbeddingMixedDim(budget=0.4, min_rows=64), True),
    "truncate.embedding_tt": (slimkit.EmbeddingTT(budget=0.3, min_rows=32, recover="distill",
                                                  **TRAIN), True),
    "quantize.static_int8": (slimkit.StaticInt8(calibration_batches=4), True),
    "quantize.static_int8.ort": (slimkit.StaticInt8(calibration_batches=4, backend="onnxruntime",
                                                    observer="kl"), True),
}
# truncate.layers names the block container, which differs per model (the CNN has none).
CONTAINER = {"deepfm": "tower", "dcnv2": "tower", "cnn": "tower", "transformer": "model.layers",
             "user": "blocks"}

# Quality floors: the share of the baseline's margin over chance (Column.retained: 1 = as good as
# the uncompressed model, 0 = no better than a model that ignores its inputs) a compressed model
# must keep, whichever way its metric points. Every floor is above 0.2, and an untrained model of
# every column scores about 0 (test_floors_reject_an_untrained_model), so each can fail. They are
# set from what each method does to the weights, for models this small (little redundancy) and
# for the roughest of their metrics (a regression's RMSE, where every output error counts):
KEEP = {
    # Trains the uncompressed model further on its own task (or its own outputs): nothing is
    # removed, so it must stay about as good; 0.1 of slack for a short run at a fixed lr.
    "finetune": 0.9,
    "distill.logits": 0.9,
    # INT8 weights per output channel within [-64, 64]: rounding error under 1% of each
    # channel's largest weight, and activations rounded to 8 bits per batch (dynamic).
    "quantize.dynamic_int8": 0.95,
    # The same INT8 weights, trained a further epoch with learned steps (LSQ).
    "quantize.qat": 0.9,
    # INT8 weights plus UINT8 activations at fixed per-tensor ranges from calibration: the
    # percentile observer clips the outer 0.01% of each tail.
    "quantize.static_int8": 0.9,
    # The KL (TensorRT entropy) observer picks the clipping threshold that best preserves the
    # histogram's shape, not the output: on inputs after a ReLU (half of them exactly 0) it
    # clips to a fraction of the range, so the tails (what a regression output is made of) are
    # cut. Looser: half the margin.
    "quantize.static_int8.ort": 0.5,
    # Row-wise INT4 tables: 16 levels between each row's min and max (error <= 1/30 of the
    # row's range); only the lookups change, the layers stay fp32.
    "quantize.embedding": 0.9,
    # INT8/INT4/INT2 per table by measured sensitivity under 30% of the fp32 bytes: most tables
    # at INT4 or below, the sensitive ones kept wider.
    "quantize.embedding_budget": 0.85,
    # Each row at 8/4/2 bits by how often training reads it, rows training never read sharing
    # one default row, within 15% of the fp32 bytes (id map included).
    "quantize.embedding_frequency": 0.7,
    # A table rebuilt with 30% (QR: 40%, its floor on 40 rows is 2 sqrt(40)) of its bytes,
    # post-training: hashing keeps the hottest rows exact and shares the rest by buckets
    # (count-weighted means); QR composes each row from two small tables fitted by least
    # squares. Rows are lost, not rounded: half the margin.
    "truncate.embedding_hash": 0.5,
    "truncate.embedding_qr": 0.5,
    # Rows by read count in blocks of narrower widths (count-weighted PCA per block) within 40%
    # of the bytes, id map included: rows keep their own values, only their tails are cut.
    "truncate.embedding_mixed_dim": 0.5,
    # Tensor-train cores at 30% of the bytes from TT-SVD of rows that are not low-rank in id
    # order, then an epoch of distillation.
    "truncate.embedding_tt": 0.5,
    # INT4 round-to-nearest in groups of 16 inputs, every Linear including the output layer.
    "quantize.weight_only": 0.85,
    # INT3 (8 levels) in groups of 32; GPTQ compensates each rounding error on the inputs not
    # yet quantized, which recovers much but not all of what 3 bits lose.
    "quantize.weight_only.gptq": 0.7,
    # k-means codebooks of 31 (Linear) / 255 (Conv) shared values, centroids fine-tuned an epoch.
    "quantize.cluster": 0.85,
    # 30% of the Linear bytes: about INT8 everywhere, or ternary/binary on the least sensitive
    # layers (chosen by measured drop) to keep sensitive ones in fp32.
    "quantize.mixed": 0.7,
    # One of the container's blocks (of 2-3) removed, the least influential by Block Influence,
    # then an epoch of distillation from the uncompressed model.
    "truncate.layers": 0.7,
    # 70% of every layer's weights removed, but over an epoch of training with a cubic ramp.
    "prune.magnitude.gradual": 0.6,
    # Half of every prunable width (neurons, channels, heads) physically removed in two steps,
    # each followed by an epoch of fine-tuning.
    "prune.structured": 0.5,
    # 70% of every layer's weights zeroed at once, no retraining: the 30% largest carry most of
    # each output but not all (Han et al. 2015 retrain beyond 50%). Half the margin must stay.
    "prune.magnitude": 0.5,
    # Half of every Linear's weights zeroed at once, chosen by calibration statistics: Wanda
    # keeps each output's largest |W| * ||x|| (no update), SparseGPT also moves the kept weights
    # to compensate (OBS). Less removed than magnitude's 70%, so more must stay.
    "prune.wanda": 0.6,
    "prune.sparsegpt": 0.6,
    # One bit per weight with a per-channel mean |W| scale (XNOR-Net) on every Linear of 16+
    # features, an epoch of straight-through training: XNOR-Net loses a large part of its
    # accuracy even with full training; only "clearly still works" is asked. Loosest.
    "quantize.binary": 0.25,
}

# Cells where a method has nothing to work on: it must refuse (SlimkitError, one line matching
# the pattern) instead of doing nothing silently. (method, column) -> (pattern, reason)
NOT_APPLICABLE = {
    ("quantize.embedding", "cnn"): (r"match no Embedding/EmbeddingBag module",
                                    "the CNN has no embedding tables"),
    ("quantize.embedding_budget", "cnn"): (r"match no Embedding/EmbeddingBag module",
                                           "the CNN has no embedding tables"),
    **{(m, "cnn"): (r"match no Embedding/EmbeddingBag module", "the CNN has no embedding tables")
       for m in ("quantize.embedding_frequency", "truncate.embedding_hash",
                 "truncate.embedding_qr", "truncate.embedding_tt",
                 "truncate.embedding_mixed_dim")},
    **{(m, "transformer"): (r"match no Embedding/EmbeddingBag module",
                            "the tiny Llama's only table is tied to its head")
       for m in ("quantize.embedding_frequency", "truncate.embedding_hash",
                 "truncate.embedding_qr", "truncate.embedding_tt",
                 "truncate.embedding_mixed_dim")},
    ("truncate.embedding_mixed_dim", "user"): (
        r"no table rebuilt .*rows < min_rows",
        "its one table has 40 rows: per-block projections and tensor headers outweigh the bytes "
        "40 narrower rows save, so min_rows leaves it alone"),
    ("truncate.layers", "cnn"): (r"^container: ",
                                 "the CNN's layers are attributes, not a Sequential/ModuleList "
                                 "of blocks"),
    # Row-quantizing one side of a tied table would store it twice (int4 rows and the fp32
    # head) or change the head too; targets leave tied modules out.
    ("quantize.embedding", "transformer"): (r"match no Embedding/EmbeddingBag module",
                                            "the tiny Llama's only table is tied to its head"),
    ("quantize.embedding_budget", "transformer"): (
        r"match no Embedding/EmbeddingBag module",
        "the tiny Llama's only table is tied to its head"),
}

# Known slimkit bugs, as strict xfails: (method, column) -> (exception, what is wrong).
BROKEN: dict[tuple[str, str], tuple[type[Exception], str]] = {}

COLUMNS = ("deepfm", "dcnv2", "cnn", "transformer", "user")


def test_every_packaged_method_has_a_row_and_a_floor() -> None:
    # Methods for text encoders: their contract runs on a tiny BERT in test_encoder_methods.py,
    # test_static_encoder.py and test_truncate_hidden.py.
    text_only = {"distill.encoder", "distill.static", "truncate.vocab", "truncate.hidden"}
    packaged = {getattr(slimkit.methods, n).method for n in slimkit.methods.__all__}
    assert packaged - text_only <= {config.method for config, _ in METHODS.values()}
    assert set(KEEP) == set(METHODS)
    assert min(KEEP.values()) > 0.2
    for method, column in [*NOT_APPLICABLE, *BROKEN]:
        assert method in METHODS and column in COLUMNS
    assert not set(NOT_APPLICABLE) & set(BROKEN)


BUILDERS = {
    "deepfm": lambda task: ctr_column(task, "deepfm"),
    "dcnv2": lambda task: ctr_column(task, "dcnv2"),
    "cnn": lambda _: cnn_column(),
    "transformer": lambda _: transformer_column(),
    "user": lambda _: user_column(),
}


def _available(name: str) -> str | None:
    """Why a column cannot run here, or None."""
    if name == "cnn" and not (Path(FASHION_MNIST) / "train-images-idx3-ubyte.gz").is_file():
        return f"Fashion-MNIST is not installed at {FASHION_MNIST} (dataset-fashion-mnist)"
    if name == "transformer" and importlib.util.find_spec("transformers") is None:
        return "transformers is not installed"
    return None


@pytest.fixture(scope="module")
def columns(tiny_task, tmp_path_factory):
    """columns(name) -> Column, its baseline trained on first use and kept for the module."""
    built: dict[str, Column] = {}

    def get(name: str) -> Column:
        if (why := _available(name)) is not None:
            pytest.skip(why)
        if name not in built:
            col = BUILDERS[name](tiny_task)
            path = slimkit.save(col.baseline, tmp_path_factory.mktemp(name) / "baseline")
            col.base_bytes = artifact_bytes(path)
            built[name] = col
        return built[name]

    return get


def _config(name: str, column: str):
    config, shrinks = METHODS[name]
    if name == "truncate.layers":
        config = dataclasses.replace(config, container=CONTAINER[column])
    return config, shrinks


def _apply(col: Column, config, seed: int = 0) -> torch.nn.Module:
    model = col.model()
    slimkit.compress_(model, slimkit.Plan(steps=(config,)), slimkit.Context(task=col.task,
                                                                           seed=seed))
    return model


def _load(col: Column, path: Path) -> torch.nn.Module:
    if col.needs_instance:  # the user's class: slimkit loads into the caller's own instance
        return slimkit.load(path, model=col.fresh()).model
    return slimkit.load(path).model


def _cells():
    for column in COLUMNS:
        for name in sorted(METHODS):
            if (name, column) in NOT_APPLICABLE:
                continue
            marks = []
            if (name, column) in BROKEN:
                exc, why = BROKEN[(name, column)]
                marks.append(pytest.mark.xfail(raises=exc, strict=True, reason=why))
            yield pytest.param(name, column, id=f"{column}-{name}", marks=marks)


@pytest.mark.parametrize(("name", "column"), list(_cells()))
def test_method_contract(name, column, columns, tmp_path) -> None:
    col = columns(column)
    config, shrinks = _config(name, column)
    model = _apply(col, config)
    x = col.task.example_inputs(32)
    with torch.inference_mode():
        out = main_output(model(*x))
    assert out.shape == col.out_shape(32) and torch.isfinite(out).all()

    metric = col.task.evaluate(model)[col.task.primary_metric]
    kept = col.retained(metric)
    assert kept >= KEEP[name], (
        f"{name} on {column}: {col.task.primary_metric} {metric:.4f} keeps {kept:.2f} of the "
        f"baseline's margin over chance ({col.base_metric:.4f} vs {col.chance:.4f}), "
        f"floor {KEEP[name]}")

    path = slimkit.save(model, tmp_path / "after")
    if shrinks:
        assert artifact_bytes(path) < col.base_bytes
    with torch.inference_mode():
        assert torch.equal(main_output(_load(col, path)(*x)), out)

    again = _apply(col, config)
    with torch.inference_mode():
        assert torch.equal(main_output(again(*x)), out)

    plan = slimkit.Plan(steps=(config,))
    assert slimkit.Plan.from_yaml(plan.to_yaml()) == plan


@pytest.mark.parametrize(("name", "column"), sorted(NOT_APPLICABLE),
                         ids=[f"{c}-{n}" for n, c in sorted(NOT_APPLICABLE)])
def test_not_applicable_is_refused(name, column, columns) -> None:
    col = columns(column)
    config, _ = _config(name, column)
    pattern, _why = NOT_APPLICABLE[(name, column)]
    model = col.model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(slimkit.SlimkitError) as info:
        slimkit.compress_(model, slimkit.Plan(steps=(config,)), slimkit.Context(task=col.task))
    message = str(info.value)
    assert "\n" not in message and re.search(pattern, message), message
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("column", COLUMNS)
def test_floors_reject_an_untrained_model(column, columns) -> None:
    """Every floor can fail: a model of the same architecture that learned nothing keeps about
    none of the baseline's margin, below the loosest floor."""
    col = columns(column)
    untrained = col.fresh()
    kept = col.retained(col.task.evaluate(untrained)[col.task.primary_metric])
    assert kept < min(KEEP.values()), kept
    assert col.retained(col.base_metric) == pytest.approx(1.0)


def test_a_user_class_loads_only_into_an_instance(columns, tmp_path) -> None:
    """slimkit cannot call the user's constructor (it takes arguments the artifact does not
    hold); it says so and names the supported way, `load(path, model=...)`."""
    col = columns("user")
    path = slimkit.save(col.baseline, tmp_path / "user")
    with pytest.raises(slimkit.SlimkitError, match=r"slimkit\.load\(path, model=\w+\(\.\.\.\)\)"):
        slimkit.load(path)
    x = col.task.example_inputs(8)
    with torch.inference_mode():
        assert torch.equal(_load(col, path)(*x), col.baseline(*x))
