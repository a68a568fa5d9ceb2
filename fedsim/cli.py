"""The ``fedsim`` command.

``fedsim run [key=value ...]`` composes the configuration with Hydra (``--help``,
``--cfg job`` and ``-m`` multirun sweeps work as in any Hydra app) and runs it;
``fedsim partition scenario=X`` prints and draws a scenario's partition; ``fedsim compare
DIR`` tabulates and plots the runs of a sweep (:mod:`fedsim.analysis.compare`).  User errors
print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from fedsim.errors import EXIT_USER_ERROR, Interrupted, UserError

USAGE = """usage: fedsim <command> [key=value ...]

commands:
  run        train a federated experiment     (fedsim run --help for every option)
  partition  show a scenario's partition      (fedsim partition scenario=digits_dirichlet_0.1)
  deploy     Flower deployment: certs, superlink, supernode, run  (fedsim deploy --help)
  compare    table + plots of a sweep's runs  (fedsim compare runs/cmp --target 0.9)
  resume     continue an interrupted run      (fedsim resume runs/digits_iid/fedavg/seed-0)
  tune       equal-budget tuning per strategy, then fresh seeds  (fedsim tune --help)
  pretrain   SimCLR pretraining -> backbone.checkpoint  (fedsim pretrain --help)

examples:
  fedsim run                                         # FedAvg on the embedded digits
  fedsim run scenario=digits_dirichlet_0.1 strategy=fedprox rounds=30 seed=1
  fedsim run -m strategy=fedavg,fedprox,fedbn seed=0,1,2 experiment=cmp
  fedsim compare runs/cmp                            # -> runs/cmp/compare/summary.md, *.png
"""

# Hydra settings for fedsim: no output directories or log files of Hydra's own (fedsim
# writes its run directories itself), and its job logging off.
HYDRA_SETTINGS = [
    "hydra.job.name=fedsim",
    "hydra.help.app_name=fedsim run",
    "hydra.output_subdir=null",
    "hydra.run.dir=.",
    "hydra.sweep.dir=${output_dir}/.hydra-multirun",
    "hydra.sweep.subdir=.",
    "hydra/job_logging=none",
    "hydra/hydra_logging=none",
]
#: Hydra flags that list config groups' options (every scenario file must be registered)
LISTS_GROUPS = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc"}
NOT_IN_TAG = {"strategy", "seed", "experiment", "output_dir", "progress", "overwrite"}


def _fail(msg: str, code: int = EXIT_USER_ERROR) -> int:
    print(f"fedsim: error: {msg}", file=sys.stderr)
    return code


def _split(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra flags (``--cfg job``, ``-m``, ...) and key=value overrides."""
    flags: list[str] = []
    overrides: list[str] = []
    i = 0
    takes_value = {
        "--cfg",
        "-c",
        "--package",
        "-p",
        "--info",
        "--config-name",
        "-cn",
        "--config-dir",
        "-cd",
        "--config-path",
        "-cp",
    }
    while i < len(args):
        a = args[i]
        if a.startswith("-"):
            flags.append(a)
            if (
                a in takes_value
                and i + 1 < len(args)
                and not args[i + 1].startswith("-")
                and "=" not in args[i + 1]
            ):
                flags.append(args[i + 1])
                i += 1
        else:
            overrides.append(a)
        i += 1
    return flags, overrides


def _swept_keys(overrides: list[str]) -> set[str]:
    from fedsim.engine.conf import sweep_values

    return {key.lstrip("+~") for key, _ in sweep_values(overrides).values()}


def _is_complete(cfg: Any) -> bool:
    from fedsim.config.paths import run_dir_for
    from fedsim.tracking.callbacks import read_status

    return read_status(run_dir_for(cfg)) == "complete"


def _is_hydra_key(override: str) -> bool:
    """``hydra.*`` and ``hydra/<group>=`` overrides (launchers, job settings)."""
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def cmd_run(args: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from fedsim.config import RunConfig
    from fedsim.config.paths import run_dir_for
    from fedsim.engine.conf import (
        PRIMARY,
        _path_scenarios,
        _rewrite_scenario,
        apply_scenario_rounds,
        check_overrides,
        from_plain,
        precheck_sweep,
        register_configs,
        selected_scenarios,
        to_plain,
    )

    flags, overrides = _split(args)
    composed: RunConfig | None = None
    try:
        extra = _path_scenarios(overrides)
        for path in extra.values():
            if not path.exists():
                raise UserError(f"scenario: file not found: {path}")
        overrides = [_rewrite_scenario(o, extra) for o in overrides]
        listing = any(f in LISTS_GROUPS for f in flags)  # --help lists every scenario
        broken = register_configs(extra, None if listing else selected_scenarios(overrides))
        check_overrides(overrides, broken)
        if not any(f in ("--help", "-h", "--hydra-help") for f in flags):
            composed = precheck_sweep(overrides)
    except UserError as e:
        return _fail(str(e))
    swept = _swept_keys(overrides) - NOT_IN_TAG

    multirun = any(f in ("-m", "--multirun") for f in flags)

    def task(dcfg: DictConfig | RunConfig) -> float:
        try:
            plain = to_plain(dcfg)
            if swept:
                chosen = HydraConfig.get().overrides.task
                parts = []
                for o in chosen:
                    key, _, value = o.partition("=")
                    if key in swept and not (key == "scenario" and not plain.get("experiment")):
                        parts.append(f"{key}={value}")
                plain["tag"] = ",".join(sorted(parts))
            cfg = from_plain(plain)
            apply_scenario_rounds(cfg, overrides)  # a scenario's rounds: unless rounds= given
            if multirun and not cfg.overwrite and not cfg.resume and _is_complete(cfg):
                # re-running a sweep after a crash redoes only what is missing
                done = run_dir_for(cfg)
                print(f"fedsim: skipping {done}: already complete (overwrite=true redoes it)")
                return float("nan")
            from fedsim.engine.launchers import limit_job_threads

            limit_job_threads(cfg)  # parallel launchers (hydra/launcher=joblib)
            from fedsim.engine.runner import execute  # torch, Flower: not for --help

            record = execute(cfg)
        except UserError as e:
            sys.exit(_fail(str(e), e.exit_code))
        final = record.get("final", {})
        acc = final.get("eval/acc")
        from fedsim.algorithms.task import describe

        what = f"{cfg.strategy.name} on {cfg.scenario.name} (seed {cfg.seed})"
        print(f"fedsim: {what}: {describe(final, cfg)}")
        print(f"fedsim: run directory {record['run_dir']}")
        print(f"fedsim: view it with: tensorboard --logdir {cfg.output_dir}")
        return float(acc) if acc is not None else float("nan")

    if composed is not None and not flags and not any(_is_hydra_key(o) for o in overrides):
        # one run, nothing for Hydra to do: run the configuration precheck_sweep composed
        # and checked rather than let Hydra compose it twice more (about 0.2 s)
        try:
            task(composed)
        except SystemExit as e:  # a user error (exit 2)
            return e.code if isinstance(e.code, int) else 1
        return 0
    main = hydra.main(config_path=None, config_name=PRIMARY, version_base=None)(task)
    saved = sys.argv
    sys.argv = ["fedsim run", *flags, *HYDRA_SETTINGS, *overrides]
    try:
        main()
    except SystemExit as e:  # a job's user error (exit 2) or Hydra's own exit
        return e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def cmd_partition(args: list[str]) -> int:
    from fedsim.data.federation import load_federation
    from fedsim.engine.conf import compose
    from fedsim.tracking.report import partition_heatmap, partition_table

    try:
        cfg = compose([a for a in args if "=" in a])
        fed = load_federation(cfg.scenario, cfg.seed)
    except UserError as e:
        return _fail(str(e))
    parts = fed.all_parts()
    labels, domains = fed.data.train_y.numpy(), fed.data.train_domain.numpy()
    print(partition_table(parts, labels, domains, fed.data.domains, fed.data.num_classes))
    out = Path(cfg.output_dir) / f"partition-{cfg.scenario.name}-seed{cfg.seed}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    partition_heatmap(parts, labels, domains, fed.data.domains, fed.data.num_classes, out)
    print(f"fedsim: heat-map written to {out}")
    return 0


def cmd_compare(args: list[str]) -> int:
    from fedsim.analysis.compare import main as compare_main

    return compare_main(args)


def cmd_tune(args: list[str]) -> int:
    from fedsim.analysis.tune_cli import main as tune_main

    return tune_main(args)


def cmd_pretrain(args: list[str]) -> int:
    from fedsim.pretrain import main as pretrain_main

    return pretrain_main(args)


def cmd_deploy(args: list[str]) -> int:
    from fedsim.deploy import cmd_deploy as deploy

    return deploy(args)


def cmd_resume(args: list[str]) -> int:
    """``fedsim resume <run_dir> [rounds=N]``: continue from the run's last checkpoint."""
    import json

    from fedsim.engine.conf import from_plain, register_configs
    from fedsim.engine.runner import execute
    from fedsim.errors import CheckpointError
    from fedsim.tracking.callbacks import STATUS_FILE

    if not args or "=" in args[0]:
        return _fail("usage: fedsim resume <run_dir> [rounds=N]")
    run_dir = Path(args[0])
    status = run_dir / STATUS_FILE
    try:
        plain = json.loads(status.read_text())["config"]
    except FileNotFoundError:
        return _fail(f"resume: {run_dir} is not a fedsim run directory (no {STATUS_FILE})")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return _fail(f"resume: {status} is unreadable ({type(e).__name__})")
    for extra in args[1:]:
        key, sep, value = extra.partition("=")
        if key != "rounds" or not sep or not value.isdigit():
            return _fail(f"resume: only rounds=N may be changed on resume, got '{extra}'")
        plain["rounds"] = int(value)
    register_configs()
    # the run directory is where it is now, whatever output_dir it was started with
    expected = Path(plain["output_dir"])
    try:
        cfg = from_plain({**plain, "resume": True})
        from fedsim.config.paths import run_dir_for

        if run_dir_for(cfg).resolve() != run_dir.resolve():
            raise CheckpointError(
                f"resume: {run_dir} does not match its recorded config "
                f"(expected it under {expected})"
            )
        record = execute(cfg)
    except UserError as e:
        return _fail(str(e), e.exit_code)
    acc = record.get("final", {}).get("eval/acc")
    print(
        f"fedsim: resumed {run_dir} to round {cfg.rounds}"
        + (f": eval/acc={acc:.4f}" if acc is not None else "")
    )
    return 0


COMMANDS = {
    "run": cmd_run,
    "resume": cmd_resume,
    "partition": cmd_partition,
    "compare": cmd_compare,
    "deploy": cmd_deploy,
    "tune": cmd_tune,
    "pretrain": cmd_pretrain,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)  # INFO goes to the run's fedsim.log only
    console.setFormatter(logging.Formatter("fedsim: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[console])
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = args[0], args[1:]
    if cmd not in COMMANDS:
        return _fail(f"unknown command '{cmd}' (allowed: {', '.join(COMMANDS)})")
    try:
        return COMMANDS[cmd](rest)
    except UserError as e:
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt as e:  # 128 + the signal, as a shell reports it
        print("fedsim: interrupted", file=sys.stderr)
        return 128 + e.signum if isinstance(e, Interrupted) else 130


if __name__ == "__main__":
    sys.exit(main())
