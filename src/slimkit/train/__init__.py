"""One training loop for teachers, recovery fine-tuning, distillation and gradual pruning."""

from .loop import StepHook, fit

__all__ = ["StepHook", "fit"]
