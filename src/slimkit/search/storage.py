"""Open the study's database and clean up after workers that died mid-trial.

A worker that is killed leaves its trial RUNNING. On the same machine, the next start sees the
process is gone and marks the trial failed at once; a worker on another machine is noticed by
its missing heartbeat after a grace period. Either way the interrupted plan is queued to run
again once, as a new trial, so the study continues where it stopped and keeps its history.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import warnings
from typing import Any

from ..core.errors import SlimkitError

log = logging.getLogger(__name__)
HEARTBEAT_S = 20
GRACE_S = 120


def _sampler(name: str, seed: int, trials: int) -> Any:
    import optuna

    if name == "nsga2":
        # A population of a third of the budget gives NSGA-II a few generations to evolve.
        population = max(4, min(50, trials // 3))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def open_study(url: str, name: str, *, sampler: str, seed: int, trials: int) -> Any:
    """Create or load study `name` in the database at `url`."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats are marked experimental in Optuna; they are what lets a study outlive a worker.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # SQLite serialises writers; wait for the lock instead of failing when workers collide.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                 grace_period=GRACE_S, heartbeat_stale_trial_callback=(
                                     RetryHeartbeatStaleTrialCallback(max_retry=1)))
            break
        except Exception as exc:  # sqlalchemy's: bad URL, unreachable server, no driver
            # Workers starting together on a new database race to create its tables.
            racing = type(exc).__name__ in ("IntegrityError", "OperationalError")
            if racing and attempt < 4:
                time.sleep(0.2 + random.random())
                continue
            raise SlimkitError(f"storage: cannot open {url!r} ({_first_line(exc)})") from None
    directions = ["minimize"] * (3 if sampler == "nsga2" else 1)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                sampler=_sampler(sampler, seed, trials), directions=directions)
    if len(study.directions) != len(directions):
        raise SlimkitError(f"sampler: study {name!r} was started with "
                           f"{'nsga2' if len(study.directions) == 3 else 'tpe'}, got {sampler!r}")
    return study


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def fail_dead_local_trials(study: Any) -> list[int]:
    """Fail RUNNING trials whose worker was a process of this machine that no longer exists,
    and queue each one's parameters again once; returns the failed trial numbers."""
    import optuna

    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker_host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        storage = study._storage
        storage.set_trial_user_attr(t._trial_id, "note", "interrupted: its worker exited")
        if storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
            failed.append(t.number)
            requeue(study, t.number)
    if failed:
        log.warning("trials %s were interrupted; their plans run again", failed)
    return failed


def requeue(study: Any, number: int | None) -> None:
    """Queue an interrupted trial's parameters as a new trial, once (a plan that kills its
    worker twice is not tried a third time)."""
    if number is None:
        return
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state.name == "FAIL" and "retry_of" not in trial.user_attrs and trial.params:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": number})
