"""The function Optuna calls for each trial: pick a plan, run it, record everything on the trial
(plan, searched steps, metrics, bytes, latency and its verdict against the baseline, drop,
artifact, worker, why it stopped)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from ..core.errors import SlimkitError, one_line
from .space import SearchSpace, describe, suggest_plan
from .trial import Hopeless, run_plan_trial

log = logging.getLogger(__name__)
COUNTED = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")  # a failed trial leaves its slot free
INTERRUPTED = "interrupted"
RECORDED = ("metrics", "bytes", "latency_ms", "latency_ratio", "latency_verdict", "latency_band",
            "latency_timed_ms", "drop")


class OverBudget(SlimkitError):
    """Another worker took the study's last trial slot while this one was asking."""


class TrialFailed(SlimkitError):
    """A plan raised something other than a user error; the trial is recorded FAIL with the
    reason and the search goes on (one plan's crash must not end a search of many)."""


def counted(trials: list[Any], below: int | None = None) -> int:
    """Trials that hold a slot of the budget (optionally only those numbered below `below`)."""
    return sum(t.state.name in COUNTED and (below is None or t.number < below) for t in trials)


class TrialFunction:
    """Run one plan per call; `last_number` / `over_budget` tell the loop what happened."""

    def __init__(self, model: nn.Module, teacher: nn.Module, task: Any, space: SearchSpace,
                 baseline: dict[str, Any], out: Path, worker: str, *, max_drop: float,
                 key: str, seed: int, batch: int, early_stop: bool, multi: bool,
                 trials: int, threads: int | None = None) -> None:
        self.model, self.teacher, self.task, self.space = model, teacher, task, space
        self.baseline, self.out, self.worker = baseline, out, worker
        self.max_drop, self.key, self.seed, self.batch = max_drop, key, seed, batch
        self.early_stop, self.multi, self.trials = early_stop, multi, trials
        self.threads = threads
        self.last_number: int | None = None
        self.over_budget = False

    def __call__(self, trial: Any) -> Any:
        import optuna

        self.last_number = trial.number
        trial.set_user_attr("worker", self.worker)
        # Workers check the budget before asking; two asking at once may overshoot by one.
        if counted(trial.study.get_trials(deepcopy=False), below=trial.number) >= self.trials:
            self.over_budget = True
            trial.set_user_attr("note", "not run: the trial budget was reached")
            raise OverBudget("the trial budget was reached by other workers")
        plan = suggest_plan(trial, self.space)
        trial.set_user_attr("plan", plan.to_dict())
        trial.set_user_attr("steps", describe(trial.params, self.space))
        same = self._measured_before(trial)
        if same is not None:  # samplers re-propose plans; a trial's numbers are deterministic
            trial.set_user_attr("note", f"same plan as trial {same.number}: not run again")
            for name in (*RECORDED, "artifact"):
                if name in same.user_attrs:
                    trial.set_user_attr(name, same.user_attrs[name])
            trial.set_constraint("quality_drop", same.user_attrs["drop"] - self.max_drop)
            return same.values if self.multi else same.values[0]
        trial.set_user_attr("note", INTERRUPTED)  # what stays if the process dies mid-trial
        artifact = f"trials/{trial.number:04d}"
        try:
            result = run_plan_trial(
                self.model, self.teacher, self.task, plan, baseline=self.baseline["metrics"],
                max_drop=self.max_drop, seed=self.seed, path=self.out / artifact,
                batch=self.batch, early_stop=self.early_stop, threads=self.threads,
                report=None if self.multi else lambda step, drop: trial.report(drop, step))
        except Hopeless as stop:
            trial.set_user_attr("note", str(stop))
            trial.set_user_attr("intermediate_drop", stop.drop)
            trial.set_constraint("quality_drop", stop.drop - self.max_drop)
            log.info("trial %d: %s", trial.number, stop)
            raise optuna.TrialPruned(str(stop)) from None
        except Exception as exc:
            reason = one_line(exc)
            trial.set_user_attr("note", f"failed: {reason}")
            trial.set_user_attr("error", reason)
            log.warning("trial %d failed: %s", trial.number, reason)
            if isinstance(exc, SlimkitError):
                raise
            raise TrialFailed(reason) from exc
        trial.set_user_attr("note", "")
        # The trial's latency on the baseline's scale: the baseline's ms over the paired ratio,
        # so trials timed under different loads compare as their ratios do (the raw medians of
        # the trial's own rounds stay in latency_timed_ms).
        result["latency_ms"] = round(self.baseline["latency_ms"] / result["latency_ratio"], 5)
        for name in RECORDED:
            trial.set_user_attr(name, result[name])
        trial.set_user_attr("artifact", artifact)
        trial.set_constraint("quality_drop", result["drop"] - self.max_drop)  # fits when <= 0
        if self.multi:
            return result["drop"], result["bytes"], result["latency_ms"]
        return result[self.key]

    def _measured_before(self, trial: Any) -> Any:
        for t in trial.study.get_trials(deepcopy=False, states=(trial_state("COMPLETE"),)):
            if t.params == trial.params and "bytes" in t.user_attrs:
                return t
        return None


def trial_state(name: str) -> Any:
    import optuna

    return optuna.trial.TrialState[name]
