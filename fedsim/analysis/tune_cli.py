"""The ``fedsim tune`` command line: its options, their checks, and what it prints.

Apart from :mod:`fedsim.analysis.tune` so that :func:`~fedsim.analysis.tune.tune` keeps
a plain Python signature for callers and tests, and the parsing of ``--space``, ``--seeds``
and the ``key=value`` overrides lives in one place.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from fedsim.analysis.tune import tune
from fedsim.analysis.tune_space import parse_space, tag_of
from fedsim.analysis.tune_study import PRUNERS, SAMPLERS
from fedsim.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"tune: {message} (see fedsim tune --help)")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,3, got {text!r}") from None


def _parser() -> _Parser:
    parser = _Parser(
        prog="fedsim tune",
        description="Tune the chosen keys of every strategy on the clients' validation "
        "splits with the same number of trials (one Optuna study per strategy), then rerun "
        "each best setting on fresh seeds into <output_dir>/<experiment> for `fedsim "
        "compare`. Other arguments are key=value overrides as for `fedsim run`.",
    )
    add = parser.add_argument
    add("--strategies", required=True, help="e.g. fedavg,fedprox")
    add(
        "--space",
        action="append",
        default=[],
        help="[STRATEGY:]KEY=log:A:B | uniform:A:B | int:A:B | choice:X:Y (repeatable)",
    )
    add("--trials", type=int, default=8, help="trials per strategy (8)")
    add("--seeds", type=_ints, default=[1, 2, 3], help="final seeds (1,2,3)")
    add("--tune-seeds", type=_ints, default=[0], help="trial seeds (0)")
    add(
        "--metric",
        default="eval/acc",
        help="validation metric (eval/acc: read as eval/val_acc when runs report it)",
    )
    add("--validation-fraction", type=float, default=0.2, help="(0.2)")
    add("--search-seed", type=int, default=0, help="seed of the candidates and samplers (0)")
    add(
        "--sampler",
        choices=SAMPLERS,
        default="random",
        help="random | qmc: the same enqueued candidates of shared keys for every strategy; "
        "tpe: Optuna's TPE after random start-up trials (random)",
    )
    add("--pruner", choices=PRUNERS, default="none", help="none | median | hyperband (none)")
    add("--pruner-warmup", type=int, default=1, help="rounds never pruned (1)")
    add("--pruner-startup", type=int, default=2, help="median: trials before pruning (2)")
    add("--storage", default="", help="SQLAlchemy URL or SQLite file (<experiment>/optuna.db)")
    add("--workers", type=int, default=1, help="trials at once, one process each (1)")
    return parser


def main(args: Sequence[str]) -> int:
    """``fedsim tune --strategies A,B --space KEY=KIND:... --trials N --seeds S,... [k=v ...]``."""
    try:
        ns, rest = _parser().parse_known_args(list(args))
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
        sampler=ns.sampler,
        pruner=ns.pruner,
        storage=ns.storage,
        workers=ns.workers,
        pruner_warmup=ns.pruner_warmup,
        pruner_startup=ns.pruner_startup,
    )
    for name, entry in report["strategies"].items():
        print(f"fedsim: tune: {name}: best {tag_of(entry['best']) or '(defaults)'}")
    print(f"fedsim: tune: {report['trial_rounds']} trial-rounds run")
    print(f"fedsim: tune: wrote {report['experiment']}/tune.md; compare the final runs with:")
    print(f"fedsim compare {report['experiment']}")
    return 0
