"""slimkit: make deep models small and fast enough to deploy.

    plan = slimkit.Plan.load("recipes/demo.yaml")
    records = slimkit.compress_(model, plan, slimkit.Context(task=task))
    slimkit.save(model, "out/model")
"""

from . import methods  # noqa: F401  (registers every method with the core registry)
from .core import (
    ArtifactError,
    ConfigError,
    Context,
    MethodConfig,
    Plan,
    Record,
    SlimkitError,
    Targets,
    Task,
    compress_,
    method_names,
    register,
    register_module_type,
)
from .eval import evaluate
from .export import Artifact, load, save
from .graph import register_resize_rule
from .methods import (
    QAT,
    BinaryWeights,
    Cluster,
    DynamicInt8,
    EmbeddingBudget,
    EmbeddingFrequency,
    EmbeddingHash,
    EmbeddingMixedDim,
    EmbeddingQR,
    EmbeddingQuant,
    EmbeddingTT,
    EncoderKD,
    Finetune,
    Hidden,
    Layers,
    LogitsKD,
    Magnitude,
    MixedPrecision,
    SparseGPT,
    StaticInt8,
    Structured,
    Vocab,
    Wanda,
    WeightOnly,
)
from .pipeline import run_plan
from .tasks.registry import make_task, register_task, task_names

__version__ = "0.1.0"

__all__ = [
    "QAT", "Artifact", "ArtifactError", "BinaryWeights", "Cluster", "ConfigError", "Context",
    "DynamicInt8", "EmbeddingBudget", "EmbeddingFrequency", "EmbeddingHash", "EmbeddingMixedDim",
    "EmbeddingQR", "EmbeddingQuant", "EmbeddingTT", "MixedPrecision", "StaticInt8",
    "SparseGPT", "Structured", "Vocab", "Wanda", "WeightOnly", "EncoderKD",
    "Finetune", "Hidden", "Layers", "LogitsKD", "Magnitude", "MethodConfig", "Plan", "Record",
    "SlimkitError", "Targets", "Task", "compress_", "evaluate", "load", "make_task",
    "method_names", "register", "register_module_type", "register_resize_rule", "register_task",
    "run_plan", "save", "task_names",
]
