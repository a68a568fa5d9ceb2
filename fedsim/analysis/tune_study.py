"""The Optuna side of ``fedsim tune``: storage, samplers, pruners, one study per strategy.

Optuna (Akiba et al., "Optuna: A Next-generation Hyperparameter Optimization
Framework", KDD 2019, arXiv:1907.10902) keeps every trial in a storage (SQLite by
default, any SQLAlchemy URL), so a killed tuning resumes, several processes share a
study and ``optuna-dashboard`` shows it while it runs.

* **Candidates.** ``random`` and ``qmc`` enqueue all of a strategy's candidates
  (:mod:`fedsim.analysis.tune_space`) when its study is created; ``tpe`` enqueues the first few
  of the random candidates and lets Optuna's TPE sampler (Bergstra et al., NeurIPS 2011)
  propose the rest from the results.
* **Pruning.** Each evaluated round's validation value is reported as the trial's
  intermediate value at step ``round`` (``k * rounds + round`` for the k-th tuning seed);
  ``median`` is Optuna's ``MedianPruner``, ``hyperband`` its ``HyperbandPruner`` (Li et
  al., JMLR 2018, arXiv:1603.06560).
* **Liveness.** A running trial records a heartbeat (user attribute
  ``fedsim_heartbeat``) every :data:`HEARTBEAT_S` seconds.  A running trial whose
  heartbeat is older than :data:`GRACE_S` belonged to a tuning that was killed: it is set
  back to *waiting* and rerun under the same trial number, its run resumed from its
  checkpoint.  A failed trial is enqueued again with the same parameters.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.analysis.tune_trial import TrialFailed, run_trial_config
from fedsim.config import RunConfig
from fedsim.errors import UserError

log = logging.getLogger(__name__)

SAMPLERS = ("random", "qmc", "tpe")
PRUNERS = ("none", "median", "hyperband")
HEARTBEAT_S = 2.0
GRACE_S = 10.0
DB_NAME = "optuna.db"
PLAN_ATTR = "fedsim_plan"
BEAT_ATTR = "fedsim_heartbeat"


def storage_url(text: str, default_db: Path) -> str:
    """``--storage``: a SQLAlchemy URL, a file path (SQLite) or "" (``default_db``)."""
    if not text:
        return f"sqlite:///{default_db.absolute()}"
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().absolute()}"


def open_storage(url: str) -> Any:
    """An Optuna RDB storage, or one line saying why it cannot be opened."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):  # several worker threads and processes write to one file
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # any driver or connection error: the user's URL is at fault
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"tune: --storage {url}: cannot open it ({reason[:200]})") from None


def make_pruner(name: str, warmup: int, startup: int, steps: int) -> Any:
    """``none``, ``median`` (prune below the median of earlier trials at the same round)
    or ``hyperband``; no trial is pruned in its first ``warmup`` rounds."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup + 1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min(warmup + 1, steps), max_resource=steps, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def make_sampler(name: str, seed: int, startup: int) -> Any:
    """The sampler of trials that were not enqueued (only ``tpe`` asks it for values)."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.RandomSampler(seed=seed)


@dataclass(frozen=True)
class StudyPlan:
    """What a strategy's study is for; a resumed or joined study must have the same."""

    name: str  # the study's name in the storage: <experiment>/<strategy>
    strategy: str
    trials: int
    sampler: str
    pruner: str
    direction: str  # maximize | minimize
    attrs: dict[str, Any]  # everything else the results depend on (spaces, seeds, ...)

    def record(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "trials": self.trials, "sampler": self.sampler,
                "pruner": self.pruner, "direction": self.direction, **self.attrs}  # fmt: skip


def ensure_study(
    storage: Any, plan: StudyPlan, candidates: Sequence[dict[str, Any]], sampler: Any, pruner: Any
) -> Any:
    """Create the study with its candidates enqueued, or load it and check its plan."""
    import optuna

    wanted = json.loads(json.dumps(plan.record()))
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=plan.name,
            direction="maximize" if plan.direction == "maximize" else "minimize",
            sampler=sampler,
            pruner=pruner,
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(
            study_name=plan.name, storage=storage, sampler=sampler, pruner=pruner
        )
        _check_plan(study, wanted, storage)
        return study
    for i, setting in enumerate(candidates):
        study.enqueue_trial(setting, user_attrs={"fedsim_candidate": i})
    study.set_user_attr(PLAN_ATTR, wanted)  # last: marks the study as complete
    return study


def _check_plan(study: Any, wanted: dict[str, Any], storage: Any) -> None:
    for _ in range(50):  # another process may be enqueueing its candidates right now
        had = study.user_attrs.get(PLAN_ATTR)
        if had is not None:
            break
        time.sleep(0.1)
    else:
        raise UserError(
            f"tune: study {study.study_name!r} in {storage.url} was never completed (its "
            "creator stopped while enqueueing); delete it (optuna delete-study) or choose "
            "another experiment="
        )
    for key in sorted(set(had) | set(wanted)):
        if had.get(key) != wanted.get(key):
            raise UserError(
                f"tune: study {study.study_name!r} in {storage.url} was made with {key}="
                f"{had.get(key)!r}, this tuning has {wanted.get(key)!r}; choose another "
                "experiment= (or --storage) or run the tuning as it was"
            )


def _params_key(trial: Any) -> str:
    params = trial.system_attrs.get("fixed_params", trial.params)
    return json.dumps(params, sort_keys=True)


def recover(study: Any, storage: Any) -> int:
    """Stale running trials back to waiting, failed trials enqueued again; returns the
    number of trials still running elsewhere (a live heartbeat)."""
    from optuna.trial import TrialState

    now = time.time()
    alive = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if now - float(t.user_attrs.get(BEAT_ATTR, started)) > GRACE_S:
            storage.set_trial_state_values(t._trial_id, state=TrialState.WAITING)
            log.warning(
                "tune: trial %d of %s was left running; it resumes", t.number, study.study_name
            )
        else:
            alive += 1
    trials = study.get_trials(deepcopy=False)
    covered = {_params_key(t) for t in trials if t.state != TrialState.FAIL}
    for t in trials:
        key = _params_key(t)
        if (
            t.state == TrialState.FAIL
            and key not in covered
            and not t.user_attrs.get("fedsim_spurious")
        ):
            study.enqueue_trial(json.loads(key), user_attrs={"fedsim_retry_of": t.number})
            covered.add(key)
    return alive


def _done(study: Any) -> int:
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


class StudyRunner:
    """Runs a study's remaining trials on ``workers`` threads, each driving one trial
    process at a time."""

    def __init__(
        self,
        study: Any,
        storage: Any,
        plan: StudyPlan,
        configs: Callable[[dict[str, Any]], list[RunConfig]],
        metric: str,
        stop: threading.Event,
        say: Callable[[str], None] = print,
    ) -> None:
        self.study, self.storage, self.plan, self.configs = study, storage, plan, configs
        self.metric, self.stop, self.say = metric, stop, say
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.ran = 0  # trials started by the current pass of the workers
        self.distributions = plan.attrs["distributions"]

    def run(self, workers: int) -> None:
        """Until every trial of the plan is complete or pruned (or the tuning stops)."""
        from optuna.distributions import json_to_distribution

        self.dists = {k: json_to_distribution(v) for k, v in self.distributions.items()}
        self._settle()
        while not self.stop.is_set():
            alive = recover(self.study, self.storage)
            if _done(self.study) >= self.plan.trials:
                if alive == 0:
                    return
                time.sleep(HEARTBEAT_S)  # another process's trials: wait for them
                continue
            self.ran = 0
            threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(workers)]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(timeout=0.5)  # short joins keep the main thread's signals live
            if self.error is not None:
                raise self.error
            if self.ran == 0 and not self.stop.is_set():  # nothing left to run: never loop
                raise UserError(
                    f"tune: study {self.study.study_name!r} has no candidate left but only "
                    f"{_done(self.study)} of {self.plan.trials} trials done; delete the study "
                    "or choose another experiment="
                )

    def _settle(self) -> None:
        """Running trials at the start belong to a killed tuning (their heartbeat stops)
        or to another live process (it goes on): wait until the first kind are stale, so
        that they resume first and the study keeps its order."""
        deadline = time.time() + GRACE_S + HEARTBEAT_S
        while not self.stop.is_set() and (alive := recover(self.study, self.storage)) > 0:
            if time.time() > deadline:
                return  # alive elsewhere: share the study with that process
            if deadline - time.time() > GRACE_S:  # said once
                self.say(
                    f"fedsim: tune: {self.study.study_name}: {alive} trial(s) marked running; "
                    f"waiting up to {GRACE_S:.0f} s for their heartbeat"
                )
            time.sleep(HEARTBEAT_S)

    def _worker(self) -> None:
        try:
            while not self.stop.is_set():
                with self.lock:
                    if _done(self.study) >= self.plan.trials:
                        return
                    trial = self.study.ask(fixed_distributions=self.dists)
                if not self._from_plan(trial):
                    return
                self.ran += 1
                self._run(trial)
        except BaseException as e:  # handed to the main thread, which raises it
            self.error = self.error or e
            self.stop.set()

    def _from_plan(self, trial: Any) -> bool:
        """random/qmc run only their enqueued candidates: a trial the sampler made up
        (another process took the last candidate first) is closed as failed, not run."""
        from optuna.trial import TrialState

        if self.plan.sampler == "tpe" or {"fedsim_candidate", "fedsim_retry_of"} & set(
            trial.user_attrs
        ):
            return True
        trial.set_user_attr("fedsim_spurious", True)
        with self.lock:
            self.study.tell(trial, state=TrialState.FAIL)
        return False

    def _run(self, trial: Any) -> None:
        from optuna.trial import TrialState

        setting = dict(trial.params)
        with self.lock:  # Hydra's composition is not thread-safe
            cfgs = self.configs(setting)
        rounds = cfgs[0].rounds
        reported = set(self.storage.get_trial(trial._trial_id).intermediate_values)
        last_beat = [0.0]

        def beat() -> None:
            if time.time() - last_beat[0] >= HEARTBEAT_S:
                trial.set_user_attr(BEAT_ATTR, time.time())
                last_beat[0] = time.time()

        finals, spent, run_dirs = [], 0, []
        for k, cfg in enumerate(cfgs):

            def report(rnd: int, value: float, offset: int = k * rounds) -> bool:
                if offset + rnd not in reported:
                    trial.report(value, offset + rnd)
                    reported.add(offset + rnd)
                return bool(trial.should_prune())

            beat()
            try:
                out = run_trial_config(cfg, self.metric, report, self.stop, beat)
            except TrialFailed as e:
                trial.set_user_attr("fedsim_error", str(e))
                with self.lock:
                    self.study.tell(trial, state=TrialState.FAIL)
                raise
            spent += out.rounds
            run_dirs.append(out.run_dir)
            trial.set_user_attr("fedsim_rounds", spent)
            trial.set_user_attr("fedsim_run_dirs", run_dirs)
            if out.status == "interrupted":  # the tuning stops: this trial resumes next time
                self.storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
                return
            if out.status == "pruned":
                trial.set_user_attr("fedsim_pruned_at", k * rounds + (out.pruned_at or 0))
                with self.lock:
                    self.study.tell(trial, state=TrialState.PRUNED)
                self._said(trial, setting, f"pruned at round {out.pruned_at} ({spent} rounds run)")
                return
            finals.append(out.final)
        value = sum(finals) / len(finals)
        trial.set_user_attr("fedsim_per_seed", finals)
        with self.lock:
            self.study.tell(trial, value)
        self._said(trial, setting, f"validation {value:.4f} ({spent} rounds)")

    def _said(self, trial: Any, setting: dict[str, Any], what: str) -> None:
        from fedsim.analysis.tune_space import tag_of

        self.say(
            f"fedsim: tune: {self.plan.strategy} trial {trial.number} "
            f"({tag_of(setting) or 'defaults'}): {what}"
        )


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """The complete and pruned trials of a study, by trial number, as ``tune.json`` lists them."""
    from optuna.trial import TrialState

    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        pruned = t.state == TrialState.PRUNED
        rows.append(
            {
                "number": t.number,
                "setting": dict(t.params),
                "state": "pruned" if pruned else "complete",
                "validation": float("nan") if pruned else float(t.value),
                "per_seed": t.user_attrs.get("fedsim_per_seed", []),
                "rounds": int(t.user_attrs.get("fedsim_rounds", 0)),
                "pruned_at": t.user_attrs.get("fedsim_pruned_at"),
                "run_dirs": t.user_attrs.get("fedsim_run_dirs", []),
            }
        )
    return rows
