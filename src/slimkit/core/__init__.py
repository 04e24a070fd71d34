"""Core: torch only. Method configs and registry, Targets, Context, Plan, compress_, Record."""

from .compress import Record, check_finite, check_plan, compress_, edit_log
from .config import (
    MethodConfig,
    check_range,
    check_training,
    lookup,
    method_names,
    register,
)
from .context import Context
from .errors import ArtifactError, ConfigError, SlimkitError
from .module_types import register_module_type
from .plan import Plan
from .targets import Targets
from .task import Batch, Task

__all__ = [
    "ArtifactError", "Batch", "ConfigError", "Context", "MethodConfig", "Plan", "Record",
    "SlimkitError", "Targets", "Task", "check_finite", "check_plan", "check_range",
    "check_training", "compress_", "edit_log", "lookup", "method_names", "register",
    "register_module_type",
]
