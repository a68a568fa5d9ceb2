"""``fedsim tune``: tune every strategy with the same budget, then report on fresh seeds.

A comparison at one learning rate favours whichever strategy that rate happens to suit.
``fedsim tune`` gives every strategy the same number of trials over the chosen keys in an
Optuna study of its own (:mod:`fedsim.analysis.tune_study`; candidates from
:mod:`fedsim.analysis.tune_space`), scores each trial on the clients' *validation* splits
(``scenario.evaluation.validation_fraction``: a share of each client's training part,
not trained on; the holdout and the global test set used for reporting stay unseen,
``evaluation.global_test=false``), and reruns each strategy's best setting on fresh seeds
with the usual holdout and test set.  Keys every strategy has (``train.lr``) take the
same candidate values for every strategy (samplers ``random`` and ``qmc``); a strategy's
own keys (``strategy.mu``) are drawn from a stream of their own.  A pruner may stop a
trial early on its per-round validation values.

Output, under ``<output_dir>``: ``<experiment>-trials/<strategy>/<setting>/seed-<S>``
(the trials), ``<experiment>/<strategy>/<setting>/seed-<S>`` (the final runs, which
``fedsim compare <output_dir>/<experiment>`` reads), ``<experiment>/optuna.db`` (the
studies, unless ``--storage`` names another) and ``<experiment>/tune.md`` / ``tune.json``
(every trial's score, the rounds it ran, and the chosen settings); ``experiment``
defaults to ``tune-<scenario>``.  A killed tuning resumes where it stopped.  The command
line is :mod:`fedsim.analysis.tune_cli`; ``tune.md`` is written by
:mod:`fedsim.analysis.tune_report`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.analysis.tune_report import tune_markdown
from fedsim.analysis.tune_space import Space, draw_settings, parse_space, sobol_settings, tag_of
from fedsim.analysis.tune_study import PRUNERS, SAMPLERS
from fedsim.errors import ConfigError, Interrupted, UserError

if TYPE_CHECKING:
    from fedsim.config import RunConfig

__all__ = ["Space", "draw_settings", "parse_space", "sobol_settings", "tag_of", "tune"]


def _config(
    base: list[str], strategy: str, seed: int, setting: dict[str, Any], extra: list[str]
) -> RunConfig:
    from fedsim.engine.conf import compose

    overrides = [*base, f"strategy={strategy}", f"seed={seed}", *extra]
    overrides += [f"{k}={v}" for k, v in setting.items()]
    cfg = compose(overrides)
    return dataclasses.replace(cfg, tag=tag_of(setting))


def _run(cfg: RunConfig) -> dict[str, Any]:
    """Run (or reuse a complete run of) one configuration; return its run.json record."""
    from fedsim.config.paths import run_dir_for
    from fedsim.engine.checkpoint import CHECKPOINT_FILE
    from fedsim.engine.runner import execute
    from fedsim.tracking.callbacks import STATUS_FILE, read_status
    from fedsim.tracking.runstate import UNFINISHED, checkpoint_round

    run_dir = run_dir_for(cfg)
    state = read_status(run_dir)
    if state == "complete" and not cfg.overwrite:
        record: dict[str, Any] = json.loads((run_dir / STATUS_FILE).read_text())
        record["run_dir"] = str(run_dir)
        print(f"fedsim: tune: reusing complete run {run_dir}")
        return record
    if state in UNFINISHED and checkpoint_round(run_dir / CHECKPOINT_FILE) is not None:
        cfg = dataclasses.replace(cfg, resume=True)  # a killed tuning's final run goes on
    return execute(cfg)


def _check_data(cfg: RunConfig) -> None:
    """Load the federation once, so a bad source or partition fails before anything is
    created (the trials run in processes of their own)."""
    from fedsim.algorithms.task import load_workload

    load_workload(cfg)  # a bad source names its scenario file


def _candidates(
    sampler: str, strategies: Sequence[str], spaces: Sequence[Space], trials: int, seed: int
) -> dict[str, list[dict[str, Any]]]:
    """The enqueued settings: all of them (random, qmc) or TPE's random start-up trials."""
    if sampler == "qmc":
        return sobol_settings(strategies, spaces, trials, seed)
    return draw_settings(strategies, spaces, _startup(sampler, trials), seed)


def _startup(sampler: str, trials: int) -> int:
    return max(1, min(10, trials // 2)) if sampler == "tpe" else trials


def _trial_threads(threads: int, workers: int) -> list[str]:
    """N trials at once on C cores: each trial gets C // N torch threads unless
    ``runtime.threads`` says otherwise (then a warning if they oversubscribe the cores)."""
    cores = os.cpu_count() or 1
    if threads == 0 and workers > 1:
        return [f"runtime.threads={max(1, cores // workers)}"]
    if workers * max(threads, 1) > cores:
        print(f"fedsim: tune: warning: {workers} workers x {threads} threads > {cores} cores")
    return []


def _make_dirs(path: Path) -> Path | None:
    """``mkdir -p``; returns the topmost directory it created (None if none)."""
    top = None
    for parent in [*reversed(path.parents), path]:
        if not parent.exists():
            top = top or parent
    path.mkdir(parents=True, exist_ok=True)
    return top


def _remove_empty(top: Path | None, path: Path) -> None:
    while top is not None and path != top.parent and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


def tune(
    strategies: Sequence[str],
    spaces: Sequence[Space],
    trials: int,
    seeds: Sequence[int],
    tune_seeds: Sequence[int] = (0,),
    metric: str = "eval/acc",
    validation_fraction: float = 0.2,
    search_seed: int = 0,
    overrides: Sequence[str] = (),
    sampler: str = "random",
    pruner: str = "none",
    storage: str = "",
    workers: int = 1,
    pruner_warmup: int = 1,
    pruner_startup: int = 2,
) -> dict[str, Any]:
    """Tune, pick, rerun; returns what ``tune.json`` records."""
    from fedsim.analysis.stats import higher_is_better

    if trials < 1:
        raise ConfigError(f"tune: --trials must be >= 1, got {trials}")
    if not 0 < validation_fraction < 1:
        raise ConfigError(
            f"tune: --validation-fraction must be in (0, 1), got {validation_fraction}"
        )
    if not seeds:
        raise ConfigError("tune: --seeds needs at least one fresh seed for the final runs")
    if not tune_seeds:
        raise ConfigError("tune: --tune-seeds needs at least one seed")
    reused = sorted(set(seeds) & set(tune_seeds))
    if reused:
        raise ConfigError(
            f"tune: final seeds {reused} are also tuning seeds; the final runs need fresh seeds"
        )
    if sampler not in SAMPLERS:
        raise ConfigError(f"tune: --sampler {sampler!r} (allowed: {', '.join(SAMPLERS)})")
    if pruner not in PRUNERS:
        raise ConfigError(f"tune: --pruner {pruner!r} (allowed: {', '.join(PRUNERS)})")
    if workers < 1 or pruner_warmup < 0 or pruner_startup < 0:
        raise ConfigError("tune: --workers must be >= 1, --pruner-warmup/-startup >= 0")
    unknown = sorted({s.strategy for s in spaces if s.strategy} - set(strategies))
    if unknown:
        raise ConfigError(f"tune: --space for {', '.join(unknown)}, which is not in --strategies")
    probe = _config(list(overrides), strategies[0], seeds[0], {}, [])
    # not the scenario's folder of ordinary runs: compare would mix them with the final runs
    experiment = probe.experiment or f"tune-{probe.scenario.name}"
    out_dir = Path(probe.output_dir)
    exp_dir = out_dir / experiment
    trial_extra = [
        f"experiment={experiment}-trials",
        f"scenario.evaluation.validation_fraction={validation_fraction}",
        "scenario.evaluation.global_test=false",
        "progress=false",
        *_trial_threads(probe.runtime.threads, workers),
    ]
    final_extra = [f"experiment={experiment}"]
    candidates = _candidates(sampler, strategies, spaces, trials, search_seed)

    def configs(name: str, setting: dict[str, Any]) -> list[RunConfig]:
        return [_config(list(overrides), name, s, setting, trial_extra) for s in tune_seeds]

    # compose every enqueued configuration and load the data first: a bad key, value,
    # source or partition fails before a study or a directory is created
    for name in strategies:
        for setting in candidates[name]:
            configs(name, setting)
    _check_data(configs(strategies[0], candidates[strategies[0]][0])[0])
    rounds = probe.rounds
    steps = rounds * len(tune_seeds)
    direction = "maximize" if higher_is_better(metric) else "minimize"
    from fedsim.analysis.tune_study import (
        DB_NAME,
        StudyPlan,
        ensure_study,
        make_pruner,
        make_sampler,
        open_storage,
        storage_url,
        trial_rows,
    )

    url = storage_url(storage, exp_dir / DB_NAME)
    created = _make_dirs(exp_dir) if not storage else None
    try:
        store = open_storage(url)
    except UserError:
        _remove_empty(created, exp_dir)
        raise
    attrs = {
        "spaces": sorted(f"{s.strategy}:{s.key}={s.kind}:{':'.join(s.args)}" for s in spaces),
        "search_seed": search_seed,
        "metric": metric,
        "tune_seeds": list(tune_seeds),
        "validation_fraction": validation_fraction,
        "rounds": rounds,
        "pruner_warmup": pruner_warmup,
        "pruner_startup": pruner_startup,
        "overrides": sorted(o for o in overrides if not o.startswith("output_dir=")),
    }
    plans, studies = {}, {}
    for name in strategies:
        dists = {s.key: s.distribution() for s in spaces if s.strategy in ("", name)}
        from optuna.distributions import distribution_to_json

        plans[name] = StudyPlan(
            f"{experiment}/{name}",
            name,
            trials,
            sampler,
            pruner,
            direction,
            {**attrs, "distributions": {k: distribution_to_json(d) for k, d in dists.items()}},
        )
        studies[name] = ensure_study(
            store,
            plans[name],
            candidates[name],
            make_sampler(sampler, search_seed, _startup(sampler, trials)),
            make_pruner(pruner, pruner_warmup, pruner_startup, steps),
        )
    print(f"fedsim: tune: studies in {url} (watch them: optuna-dashboard {url})")
    _run_studies(studies, store, plans, configs, metric, workers)
    up = direction == "maximize"
    report: dict[str, Any] = {"metric": metric, "trials": trials, "strategies": {}}
    for name in strategies:
        rows = trial_rows(studies[name])
        finite = [t for t in rows if t["state"] == "complete" and math.isfinite(t["validation"])]
        if not finite:
            raise UserError(f"tune: no trial of {name} completed with a value of {metric}")
        best = (max if up else min)(finite, key=lambda t: t["validation"])
        report["strategies"][name] = {
            "trials": rows,
            "best": best["setting"],
            "best_trial": best["number"],
            "study": plans[name].name,
            "trial_rounds": sum(t["rounds"] for t in rows),
        }
    finals = {
        name: [
            _config(list(overrides), name, s, report["strategies"][name]["best"], final_extra)
            for s in seeds
        ]
        for name in strategies
    }
    for name in strategies:
        records = [_run(cfg) for cfg in finals[name]]
        report["strategies"][name]["final_runs"] = [r["run_dir"] for r in records]
    report.update(
        experiment=str(exp_dir),
        trials_dir=str(out_dir / f"{experiment}-trials"),
        seeds=list(seeds),
        tune_seeds=list(tune_seeds),
        validation_fraction=validation_fraction,
        search_seed=search_seed,
        sampler=sampler,
        pruner=pruner,
        pruner_warmup=pruner_warmup,
        pruner_startup=pruner_startup,
        storage=url,
        workers=workers,
        rounds=rounds,
        trial_rounds=sum(e["trial_rounds"] for e in report["strategies"].values()),
    )
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "tune.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    (exp_dir / "tune.md").write_text(tune_markdown(report))
    return report


def _run_studies(
    studies: dict[str, Any],
    store: Any,
    plans: dict[str, Any],
    configs: Any,
    metric: str,
    workers: int,
) -> None:
    """Every strategy's remaining trials; SIGINT/SIGTERM stop the trials at the end of
    their round (each resumes next time) and end the tuning with 128 + the signal."""
    from fedsim.analysis.tune_study import StudyRunner

    stop = threading.Event()
    got: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        got.append(signum)
        stop.set()

    main_thread = threading.current_thread() is threading.main_thread()
    previous = (
        {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        if (main_thread)
        else {}
    )
    try:
        for name, study in studies.items():
            runner = StudyRunner(study, store, plans[name], partial(configs, name), metric, stop)
            runner.run(workers)
            if got:
                raise Interrupted(got[0], f"signal {got[0]}: the tuning stopped; run it again")
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
