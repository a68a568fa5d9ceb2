"""``fedsim tune``: tune every strategy with the same budget, then report on fresh seeds.

A comparison at one learning rate favours whichever strategy that rate happens to suit.
``fedsim tune`` gives every strategy the same number of trials drawn by a seeded random
search (Bergstra & Bengio, "Random search for hyper-parameter optimization", JMLR 2012)
over the chosen keys, scores each trial on the clients' *validation* splits
(``scenario.evaluation.validation_fraction``: a share of each client's training part,
not trained on; the holdout and the global test set used for reporting stay unseen,
``evaluation.global_test=false``), and reruns each strategy's best setting on fresh seeds
with the usual holdout and test set.  Keys every strategy has (``train.lr``) take the
same candidate values for every strategy; a strategy's own keys (``strategy.mu``) are
drawn from a stream of their own.

Output, under ``<output_dir>``: ``<experiment>-trials/<strategy>/<setting>/seed-<S>``
(the trials), ``<experiment>/<strategy>/<setting>/seed-<S>`` (the final runs, which
``fedsim compare <output_dir>/<experiment>`` reads) and ``<experiment>/tune.md`` /
``tune.json`` (every trial's score and the chosen settings); ``experiment`` defaults to
``tune-<scenario>``.  Complete runs are skipped,
so an interrupted tuning resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from fedsim.errors import ConfigError, UserError

if TYPE_CHECKING:
    from fedsim.config import RunConfig

DISTRIBUTIONS = ("log", "uniform", "int", "choice")


@dataclass(frozen=True)
class Space:
    """One tuned key: ``KEY=log:A:B`` (log-uniform), ``uniform:A:B``, ``int:A:B``
    (integers A..B) or ``choice:X:Y:...``; ``STRATEGY:KEY=...`` tunes it for one strategy."""

    key: str
    kind: str
    args: tuple[str, ...]
    strategy: str = ""  # "" = every strategy

    def draw(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        low, high = float(self.args[0]), float(self.args[1])
        if self.kind == "int":
            return int(rng.integers(int(low), int(high) + 1))
        if self.kind == "log":
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        return float(f"{value:.3g}")  # readable folder names; 3 digits are plenty


def parse_space(text: str) -> Space:
    """``[STRATEGY:]KEY=KIND:ARG:ARG...`` -> :class:`Space` (a ConfigError if malformed)."""
    where = f"tune: --space {text!r}"
    left, sep, right = text.partition("=")
    kind, _, rest = right.partition(":")
    strategy, _, key = left.rpartition(":")
    args = tuple(a for a in rest.split(":") if a) if rest else ()
    if not sep or not key or kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where}: expected [STRATEGY:]KEY=KIND:ARGS with KIND one of "
            f"{', '.join(DISTRIBUTIONS)} (e.g. train.lr=log:0.01:0.3, fedprox:strategy.mu="
            "log:0.001:1, train.optimizer=choice:sgd:adam)"
        )
    if kind == "choice":
        if not args:
            raise ConfigError(f"{where}: choice needs at least one value")
        return Space(key, kind, args, strategy)
    try:
        low, high = (float(a) for a in args)
    except ValueError:
        raise ConfigError(f"{where}: {kind} needs two numbers LOW:HIGH") from None
    if not low <= high or (kind == "log" and low <= 0):
        raise ConfigError(f"{where}: needs LOW <= HIGH" + (" and LOW > 0" if kind == "log" else ""))
    return Space(key, kind, args, strategy)


def draw_settings(
    strategies: Sequence[str], spaces: Sequence[Space], trials: int, seed: int
) -> dict[str, list[dict[str, Any]]]:
    """``trials`` settings per strategy; shared keys take the same values for every one."""
    shared_rng = np.random.default_rng([seed, 0])
    shared = [{s.key: s.draw(shared_rng) for s in spaces if not s.strategy} for _ in range(trials)]
    out: dict[str, list[dict[str, Any]]] = {}
    for name in strategies:  # a stream per strategy name: the list's order does not matter
        own_rng = np.random.default_rng([seed, 1, zlib.crc32(name.encode())])
        own = [s for s in spaces if s.strategy == name]
        out[name] = [{**shared[t], **{s.key: s.draw(own_rng) for s in own}} for t in range(trials)]
    return out


def tag_of(setting: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(setting.items()))


def _config(
    base: list[str], strategy: str, seed: int, setting: dict[str, Any], extra: list[str]
) -> RunConfig:
    from fedsim.conf import compose

    overrides = [*base, f"strategy={strategy}", f"seed={seed}", *extra]
    overrides += [f"{k}={v}" for k, v in setting.items()]
    cfg = compose(overrides)
    return dataclasses.replace(cfg, tag=tag_of(setting))


def _run(cfg: RunConfig) -> dict[str, Any]:
    """Run (or reuse a complete run of) one configuration; return its run.json record."""
    from fedsim.paths import run_dir_for
    from fedsim.runner import execute
    from fedsim.tracking import STATUS_FILE, read_status

    run_dir = run_dir_for(cfg)
    if read_status(run_dir) == "complete" and not cfg.overwrite:
        record: dict[str, Any] = json.loads((run_dir / STATUS_FILE).read_text())
        record["run_dir"] = str(run_dir)
        print(f"fedsim: tune: reusing complete run {run_dir}")
        return record
    return execute(cfg)


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
) -> dict[str, Any]:
    """Tune, pick, rerun; returns what ``tune.json`` records."""
    from fedsim.stats import higher_is_better

    if trials < 1:
        raise ConfigError(f"tune: --trials must be >= 1, got {trials}")
    if not 0 < validation_fraction < 1:
        raise ConfigError(
            f"tune: --validation-fraction must be in (0, 1), got {validation_fraction}"
        )
    if not seeds:
        raise ConfigError("tune: --seeds needs at least one fresh seed for the final runs")
    reused = sorted(set(seeds) & set(tune_seeds))
    if reused:
        raise ConfigError(
            f"tune: final seeds {reused} are also tuning seeds; the final runs need fresh seeds"
        )
    unknown = sorted({s.strategy for s in spaces if s.strategy} - set(strategies))
    if unknown:
        raise ConfigError(f"tune: --space for {', '.join(unknown)}, which is not in --strategies")
    probe = _config(list(overrides), strategies[0], seeds[0], {}, [])
    # not the scenario's folder of ordinary runs: compare would mix them with the final runs
    experiment = probe.experiment or f"tune-{probe.scenario.name}"
    out_dir = Path(probe.output_dir)
    trial_extra = [
        f"experiment={experiment}-trials",
        f"scenario.evaluation.validation_fraction={validation_fraction}",
        "scenario.evaluation.global_test=false",
    ]
    final_extra = [f"experiment={experiment}"]
    settings = draw_settings(strategies, spaces, trials, search_seed)
    # compose every configuration first: a bad key or value fails before anything runs
    planned = {
        name: [
            [_config(list(overrides), name, s, setting, trial_extra) for s in tune_seeds]
            for setting in settings[name]
        ]
        for name in strategies
    }
    up = higher_is_better(metric)
    report: dict[str, Any] = {"metric": metric, "trials": trials, "strategies": {}}
    for name in strategies:
        scored: list[dict[str, Any]] = []
        for setting, cfgs in zip(settings[name], planned[name], strict=True):
            values = [_run(cfg).get("final", {}).get(metric, math.nan) for cfg in cfgs]
            score = float(np.mean(values)) if values else math.nan
            scored.append({"setting": setting, "validation": score, "per_seed": values})
        finite = [t for t in scored if math.isfinite(t["validation"])]
        if not finite:
            raise UserError(f"tune: no trial of {name} recorded {metric}")
        best = (max if up else min)(finite, key=lambda t: t["validation"])
        report["strategies"][name] = {"trials": scored, "best": best["setting"]}
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
    exp_dir = out_dir / experiment
    report.update(
        experiment=str(exp_dir),
        trials_dir=str(out_dir / f"{experiment}-trials"),
        seeds=list(seeds),
        tune_seeds=list(tune_seeds),
        validation_fraction=validation_fraction,
        search_seed=search_seed,
    )
    (exp_dir / "tune.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    (exp_dir / "tune.md").write_text(tune_markdown(report))
    return report


def tune_markdown(report: dict[str, Any]) -> str:
    m = report["metric"]
    lines = [
        f"# Tuning of `{Path(report['experiment']).name}`",
        "",
        f"{report['trials']} trials per strategy (seeded random search, search seed "
        f"{report['search_seed']}), scored by the final `{m}` on the clients' validation "
        f"splits ({report['validation_fraction']:g} of each client's training part; "
        f"tuning seeds {report['tune_seeds']}); the best setting of each strategy was "
        f"rerun on the fresh seeds {report['seeds']}, whose holdout and test set the "
        "tuning never saw. Compare them with "
        f"`fedsim compare {report['experiment']}`.",
        "",
        f"| strategy | trial | setting | validation `{m}` | chosen |",
        "|---|---|---|---|---|",
    ]
    for name, entry in report["strategies"].items():
        for i, t in enumerate(entry["trials"]):
            chosen = "**yes**" if t["setting"] == entry["best"] else ""
            lines.append(
                f"| {name} | {i} | {tag_of(t['setting']) or '—'} | {t['validation']:.4f} "
                f"| {chosen} |"
            )
    return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"tune: {message} (see fedsim tune --help)")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,3, got {text!r}") from None


def main(args: Sequence[str]) -> int:
    """``fedsim tune --strategies A,B --space KEY=KIND:... --trials N --seeds S,... [k=v ...]``."""
    parser = _Parser(
        prog="fedsim tune",
        description="Tune the chosen keys of every strategy on the clients' validation "
        "splits with the same number of trials, then rerun each best setting on fresh "
        "seeds into <output_dir>/<experiment> for `fedsim compare`. Other arguments are "
        "key=value overrides as for `fedsim run`.",
    )
    parser.add_argument("--strategies", required=True, help="e.g. fedavg,fedprox")
    parser.add_argument(
        "--space",
        action="append",
        default=[],
        help="[STRATEGY:]KEY=log:A:B | uniform:A:B | int:A:B | choice:X:Y (repeatable)",
    )
    parser.add_argument("--trials", type=int, default=8, help="trials per strategy (8)")
    parser.add_argument("--seeds", type=_ints, default=[1, 2, 3], help="final seeds (1,2,3)")
    parser.add_argument("--tune-seeds", type=_ints, default=[0], help="trial seeds (0)")
    parser.add_argument("--metric", default="eval/acc", help="validation metric (eval/acc)")
    parser.add_argument("--validation-fraction", type=float, default=0.2, help="(0.2)")
    parser.add_argument("--search-seed", type=int, default=0, help="random search seed (0)")
    try:
        ns, rest = parser.parse_known_args(list(args))
    except SystemExit as e:  # --help
        return int(e.code or 0)
    flags = [a for a in rest if a.startswith("-")]
    if flags:
        raise UserError(f"tune: unknown option {flags[0]} (see fedsim tune --help)")
    if not ns.space:
        raise UserError("tune: give at least one --space (e.g. --space train.lr=log:0.01:0.3)")
    report = tune(
        [s for s in ns.strategies.split(",") if s],
        [parse_space(s) for s in ns.space],
        ns.trials,
        ns.seeds,
        ns.tune_seeds,
        ns.metric,
        ns.validation_fraction,
        ns.search_seed,
        rest,
    )
    for name, entry in report["strategies"].items():
        print(f"fedsim: tune: {name}: best {tag_of(entry['best']) or '(defaults)'}")
    print(f"fedsim: tune: wrote {report['experiment']}/tune.md; compare the final runs with:")
    print(f"fedsim compare {report['experiment']}")
    return 0
