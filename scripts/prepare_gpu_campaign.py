"""Prepare the GPU campaign (``bench/gpu_campaign.sh``) on a machine that reaches PyPI.

    python scripts/prepare_gpu_campaign.py                # .gpu_wheels and .gpu_data
    python scripts/prepare_gpu_campaign.py --with-ray     # and Ray (74 MB more)
    python scripts/prepare_gpu_campaign.py --skip-wheels  # the data only
    python scripts/prepare_gpu_campaign.py --python-version 3.11 --wheels /tmp/w311  # a cp311 set

The GPU host has Python 3.12 with torch, torchvision, timm and tensorboard installed and no
package index, and the ``../shared`` folder beside the checkout is not there.  The checkout
reaches it with at most 64 MiB of git-ignored files, so it carries two small folders:

``.gpu_wheels/``
    cp312 manylinux x86-64 wheels of what the campaign's code paths (``pytest -m gpu`` and
    ``bench/gpu.py``) need and the host lacks, and nothing else (25 MiB; matplotlib, for
    the partition picture every run draws, is 13 of them); ``requirements.txt`` pins them
    (``name==version``) and is exactly what the campaign installs, with
    ``pip install --no-index --no-deps``.  The set is fedsim's ``[project] dependencies``
    plus pytest and pytest-timeout, resolved here for the target interpreter, less

    * what the host has (``HOST_PROVIDED``: torch, torchvision, timm, tensorboard and the
      dependencies they declare in every recent release), and
    * what the campaign never imports (``LEFT_OUT``, with the reason for each): Ray, uv,
      flwr's SuperLink server stack, scipy, scikit-learn, optuna, ...

    walking the dependency metadata from the roots and stopping at both.  Versions are
    pinned to this environment's (``constraints.txt``), so the host runs what was tested
    here.  Where a release publishes a pure Python wheel beside a compiled one of more than
    1 MiB, the pure one is carried (fontTools).  The folder also holds a setuptools wheel,
    not installed: pip builds fedsim with it (``pip install --no-deps .``).  A requirement
    published only as a source archive is built here into a wheel when it is pure Python
    (``py3-none-any``); anything else without a wheel for the target is an error that
    names it.  Wheels of an earlier set that the current one does not list are deleted.
``.gpu_data/``
    the CIFAR-10 subset of ``../shared/data`` (``cifar10/cifar10_{train,test}.npz`` and
    the data README with its sources and licences); the campaign points ``FEDSIM_DATA``
    at it.

The script ends with the sizes and fails when the wheels exceed ``--max-mib`` (default 40)
or wheels and data together exceed ``--max-total-mib`` (default 60).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DATA_FILES = ["cifar10/cifar10_train.npz", "cifar10/cifar10_test.npz", "README.md"]
TEST_TOOLS = {"pytest", "pytest-timeout"}  # from the dev extra; no gpu-marked test uses hypothesis
PURE_ABOVE = 2**20  # bytes: a bigger compiled wheel gives way to its release's pure one
BUILD_ONLY = "setuptools"  # fedsim's build backend: pip builds fedsim with it, not installed

# On the GPU host already: the four packages and what they require (Requires-Dist of torch
# 2.11 (CUDA 13), torchvision, timm 1.0, tensorboard 2.21).  huggingface-hub (timm's) counts
# only for what every release from 0.x to 2.x requires: its HTTP client changed from
# requests to httpx to httpx2, so flwr's httpx is carried.
HOST_PROVIDED = {
    "torch", "torchvision", "timm", "tensorboard",
    # torch
    "filelock", "typing-extensions", "setuptools", "sympy", "mpmath", "networkx", "jinja2",
    "markupsafe", "fsspec", "triton",
    # torchvision
    "numpy", "pillow",
    # tensorboard
    "absl-py", "grpcio", "markdown", "packaging", "protobuf", "tensorboard-data-server",
    "werkzeug",
    # timm and huggingface-hub
    "pyyaml", "huggingface-hub", "safetensors", "tqdm",
}  # fmt: skip

# Declared by fedsim or flwr but never imported by the campaign (tests/test_gpu.py's runs,
# bench.gpu's plain/inline/vec runs, pytest); checked by running the campaign in an
# environment without them.
LEFT_OUT = {
    "ray": "Flower's Ray engine (runtime=ray, 74 MB): the Ray GPU test skips without it; "
    "--with-ray brings it",
    "uv": "flwr runs `python -m uv sync` only when a SuperExec installs an app's "
    "dependencies; fedsim runs its ServerApp and ClientApps in-process and the campaign sets "
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 (18 MB)",
    "sqlalchemy": "flwr's SuperLink state database (fedsim deploy) and optuna's storage",
    "alembic": "flwr's SuperLink database migrations (fedsim deploy)",
    "fastapi": "flwr's SuperLink HTTP API (fedsim deploy)",
    "starlette": "flwr's SuperLink HTTP API (fedsim deploy)",
    "uvicorn": "flwr's SuperLink HTTP server (fedsim deploy)",
    "scipy": "open-world metrics, fedsim compare's statistics and fedsim tune's quasi-random "
    "search import it when used (35 MB)",
    "scikit-learn": "only the embedded digits loader imports it (9 MB)",
    "optuna": "fedsim tune",
    "hydra-joblib-launcher": "parallel sweeps (hydra/launcher=joblib)",
    "prompt-toolkit": "flwr's interactive command line (flwr/cli/chat)",
    "requests": "flwr's SuperLink control API and app connectors",
    "tomli": "reading pyproject.toml for `flwr run`/`flwr build` and fedsim deploy",
    "tomli-w": "writing pyproject.toml for `flwr build` and fedsim deploy",
    "pathspec": "`flwr build` (packaging an app)",
}
WITH_RAY = {"ray", "requests"}  # what --with-ray takes back from LEFT_OUT (Ray requires requests)


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return canonical(Requirement(req).name)


def requirements(pyproject: Path, with_ray: bool = False) -> list[str]:
    """fedsim's runtime requirements and the test tools (flwr without its Ray extra unless
    ``with_ray``), the host's and the left-out ones included."""
    meta = tomllib.loads(pyproject.read_text())
    out = []
    for text in meta["project"]["dependencies"]:
        req = Requirement(text)
        if "simulation" in req.extras and not with_ray:  # flwr's simulation extra is Ray
            req.extras.discard("simulation")
        out.append(str(req))
    dev = meta["project"]["optional-dependencies"]["dev"]
    out += [r for r in dev if requirement_name(r) in TEST_TOOLS]
    return out


def roots(pyproject: Path, with_ray: bool = False) -> list[str]:
    """The requirements the campaign starts from: :func:`requirements` less the host's
    packages and the left-out ones."""
    skip = HOST_PROVIDED | set(left_out(with_ray))
    return [r for r in requirements(pyproject, with_ray) if requirement_name(r) not in skip]


def build_requirement(pyproject: Path) -> str:
    reqs = tomllib.loads(pyproject.read_text())["build-system"]["requires"]
    (backend,) = [r for r in reqs if requirement_name(r) == BUILD_ONLY]
    return backend


def left_out(with_ray: bool) -> dict[str, str]:
    """``LEFT_OUT``, less Ray and what Ray requires of it when ``with_ray``."""
    return {k: v for k, v in LEFT_OUT.items() if not (with_ray and k in WITH_RAY)}


def target_environment(python: str) -> dict[str, str]:
    """Marker variables of a CPython ``python`` on x86-64 Linux."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python}.0",
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "sys_platform": "linux",
        "os_name": "posix",
    }


@dataclass
class WheelSet:
    """The distributions to carry (name -> version) and what the walk stopped at."""

    pins: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, set[str]] = field(default_factory=dict)  # name -> required by
    host: dict[str, set[str]] = field(default_factory=dict)


def walk(
    items: Iterable[dict[str, Any]],
    root_reqs: Iterable[str],
    env: dict[str, str],
    skip_left: Iterable[str],
    skip_host: Iterable[str] = HOST_PROVIDED,
) -> WheelSet:
    """The dependency closure of ``root_reqs`` over a pip ``--report``'s ``install`` items,
    evaluating markers (and extras) for ``env``, never entering a host or left-out package."""
    meta = {canonical(i["metadata"]["name"]): i["metadata"] for i in items}
    left, host = set(skip_left), set(skip_host)
    out = WheelSet()
    seen: dict[str, set[str]] = {}
    stack = [(Requirement(r), "fedsim") for r in root_reqs]
    while stack:
        req, parent = stack.pop()
        name = canonical(req.name)
        if name in host or name in left:
            (out.host if name in host else out.left_out).setdefault(name, set()).add(parent)
            continue
        extras = set(req.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        if name not in meta:
            raise SystemExit(f"prepare: {name} (required by {parent}) is not in pip's resolution")
        out.pins[name] = str(Version(meta[name]["version"]))
        for text in meta[name].get("requires_dist") or []:
            dep = Requirement(text)
            if dep.marker is not None and not any(
                dep.marker.evaluate({**env, "extra": e}) for e in {"", *seen[name]}
            ):
                continue
            stack.append((dep, name))
    return out


def constraints() -> list[str]:
    """``name==version`` of every distribution in this environment but fedsim and the host's."""
    pins = {}
    for dist in md.distributions():
        name = canonical(dist.metadata["Name"] or "")
        if name and name not in {"fedsim", "torch", "torchvision", "timm", "tensorboard"}:
            pins[name] = f"{name}=={dist.version}"
    return [pins[k] for k in sorted(pins)]


def platform_args(python: str, glibc_max: int) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    abi = "cp" + python.replace(".", "")
    for a in (abi, "abi3", "none"):
        args += ["--abi", a]
    args += ["--platform", "manylinux2014_x86_64"]
    for minor in range(17, glibc_max + 1):
        args += ["--platform", f"manylinux_2_{minor}_x86_64"]
    return args


def pip(*args: str) -> None:
    if subprocess.run([sys.executable, "-m", "pip", *args]).returncode != 0:
        raise SystemExit(f"prepare: pip {args[0]} failed; its error above names the requirement")


def resolve(reqs: list[str], cons: Path, extra: list[str]) -> list[dict[str, Any]]:
    """pip's resolution of ``reqs`` (``install --dry-run --report``): its ``install`` items."""
    with tempfile.TemporaryDirectory() as tmp:
        req_file, report = Path(tmp) / "req.txt", Path(tmp) / "report.json"
        req_file.write_text("\n".join(reqs) + "\n")
        pip(
            "install", "--dry-run", "--ignore-installed", "-q", "--report", str(report),
            "-r", str(req_file), "-c", str(cons), *extra,
        )  # fmt: skip
        items: list[dict[str, Any]] = json.loads(report.read_text())["install"]
        return items


def build_pure_wheel(pin: str, dest: Path, cons: Path) -> None:
    """Build ``pin`` (published as a source archive only) into a wheel in ``dest``; it must
    be pure Python, or it would not run on the host's interpreter."""
    name, version = pin.split("==")
    if any(wheel_key(w) == (canonical(name), str(Version(version))) for w in dest.glob("*.whl")):
        return
    print(f"prepare: {pin} is published as a source archive only; building its wheel here")
    with tempfile.TemporaryDirectory() as tmp:
        pip("wheel", "--no-deps", "-q", "-w", tmp, "-c", str(cons), pin)
        built = sorted(Path(tmp).glob("*.whl"))
        if len(built) != 1:
            raise SystemExit(f"prepare: pip wheel built {len(built)} wheels for {pin}")
        if not built[0].name.endswith("-none-any.whl"):
            raise SystemExit(
                f"prepare: {pin} has no wheel for the host and its source builds a platform "
                f"wheel ({built[0].name}); it cannot be carried to the GPU host"
            )
        shutil.move(built[0], dest / built[0].name)


def wheel_key(path: Path) -> tuple[str, str]:
    """(canonical name, version) from a wheel's file name."""
    name, version = path.name.split("-")[:2]
    return canonical(name), str(Version(version))


def is_pure(path: Path) -> bool:
    return path.name.endswith("-none-any.whl")


def fetch_wheels(dest: Path, pins: dict[str, str], python: str, glibc_max: int) -> None:
    """Download the wheel of every pin into ``dest`` and delete every other wheel there.

    A release that publishes a pure Python wheel beside its compiled ones is carried as the
    pure one when its compiled wheel is over ``PURE_ABOVE`` (fontTools: 1.2 instead of 6.4
    MiB; its compiled modules only speed up font compilation, which matplotlib's Agg
    rendering does not use)."""
    pure = {wheel_key(w) for w in dest.glob("*.whl") if is_pure(w)}
    todo = [f"{n}=={v}" for n, v in sorted(pins.items()) if (n, v) not in pure]
    pip(
        "download", "--no-deps", "-q", "--dest", str(dest), "--find-links", str(dest),
        *platform_args(python, glibc_max), *todo,
    )  # fmt: skip
    for wheel in sorted(dest.glob("*.whl")):
        name, version = wheel_key(wheel)
        if is_pure(wheel) or wheel.stat().st_size <= PURE_ABOVE or pins.get(name) != version:
            continue
        pure_only = ["--only-binary=:all:", "--python-version", python, "--platform", "any"]
        pure_only += ["--implementation", "py", "--abi", "none", f"{name}=={version}"]
        with tempfile.TemporaryDirectory() as tmp:
            download = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--dest", tmp]
            # most releases have no pure wheel: pip's failure then is no error
            subprocess.run([*download, *pure_only], capture_output=True)
            for alt in Path(tmp).glob("*-none-any.whl"):
                print(f"prepare: {alt.name} instead of {wheel.name}")
                shutil.move(alt, dest / alt.name)
                wheel.unlink()
    have: dict[tuple[str, str], list[Path]] = {}
    for wheel in dest.glob("*.whl"):
        have.setdefault(wheel_key(wheel), []).append(wheel)
    missing = [f"{n}=={v}" for n, v in pins.items() if (n, v) not in have]
    if missing:
        raise SystemExit(f"prepare: no wheel in {dest} for {', '.join(missing)}")
    for (name, version), paths in have.items():
        keep = None
        if pins.get(name) == version:
            keep = next((p for p in paths if is_pure(p)), paths[0])
        for path in paths:
            if path != keep:
                print(f"prepare: removing {path.name} (not in the current set)")
                path.unlink()


def prepare_wheels(dest: Path, python: str, glibc_max: int, with_ray: bool, pin: bool) -> WheelSet:
    """Fill ``dest`` with the wheel set and its ``requirements.txt``; returns the set."""
    dest.mkdir(parents=True, exist_ok=True)
    pyproject = REPO / "pyproject.toml"
    root_reqs = roots(pyproject, with_ray)
    backend = build_requirement(pyproject)
    cons = dest / "constraints.txt"
    cons.write_text("\n".join(constraints() if pin else []) + "\n")
    # 1. what would come from a source archive here: built into pure wheels first
    for item in resolve(root_reqs, cons, []):
        if not item["download_info"]["url"].endswith(".whl"):
            build_pure_wheel(
                f"{item['metadata']['name']}=={item['metadata']['version']}", dest, cons
            )
    # 2. the resolution for the target interpreter and platform, then the closure
    target = [*platform_args(python, glibc_max), "--target", str(dest / ".resolve-target")]
    items = resolve([*root_reqs, backend], cons, ["--find-links", str(dest), *target])
    everything = requirements(pyproject, with_ray)
    wanted = walk(items, everything, target_environment(python), left_out(with_ray))
    (build,) = [i for i in items if canonical(i["metadata"]["name"]) == BUILD_ONLY]
    pins = {**wanted.pins, BUILD_ONLY: str(Version(build["metadata"]["version"]))}
    # 3. exactly those wheels, pure Python ones where a release publishes both kinds
    fetch_wheels(dest, pins, python, glibc_max)
    abi = "cp" + python.replace(".", "")
    lines = [
        f"# fedsim GPU campaign: {abi} manylinux x86-64 wheels the host lacks, written by",
        "# scripts/prepare_gpu_campaign.py; the campaign installs exactly these:",
        "#   pip install --no-index --no-deps --find-links .gpu_wheels --target .gpu_site -r THIS",
        f"# python-version: {python}",
        f"# build only, not installed: {BUILD_ONLY}=={pins[BUILD_ONLY]} (pip builds fedsim)",
        "# on the host already: " + ", ".join(sorted(wanted.host)),
    ]
    lines += [
        f"# left out: {name} (required by {', '.join(sorted(by))}): {LEFT_OUT[name]}"
        for name, by in sorted(wanted.left_out.items())
    ]
    lines += [f"{n}=={v}" for n, v in sorted(wanted.pins.items())]
    (dest / "requirements.txt").write_text("\n".join(lines) + "\n")
    return wanted


def copy_data(source: Path, dest: Path) -> None:
    for rel in DATA_FILES:
        src = source / rel
        if not src.exists():
            raise SystemExit(f"prepare: {src} not found (the campaign needs the CIFAR-10 subset)")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)


def size_mib(path: Path) -> float:
    if not path.exists():
        return 0.0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--wheels", type=Path, default=REPO / ".gpu_wheels")
    ap.add_argument("--data", type=Path, default=REPO / ".gpu_data")
    ap.add_argument("--shared-data", type=Path, default=SHARED_DATA)
    ap.add_argument("--python-version", default="3.12", help="the host's, MAJOR.MINOR")
    ap.add_argument("--glibc-max", type=int, default=28, help="newest manylinux_2_N to accept")
    ap.add_argument("--with-ray", action="store_true", help="carry Ray too (74 MB)")
    ap.add_argument("--no-pin", action="store_true", help="newest versions, not this environment's")
    ap.add_argument("--max-mib", type=float, default=40.0, help="most MiB of wheels")
    ap.add_argument("--max-total-mib", type=float, default=60.0, help="most MiB of wheels + data")
    ap.add_argument("--skip-wheels", action="store_true")
    ap.add_argument("--skip-data", action="store_true")
    args = ap.parse_args(argv)
    if not args.skip_wheels:
        wanted = prepare_wheels(
            args.wheels, args.python_version, args.glibc_max, args.with_ray, not args.no_pin
        )
        for name, by in sorted(wanted.left_out.items()):
            needed_by = ", ".join(sorted(by))
            print(f"prepare: left out {name} (required by {needed_by}): {LEFT_OUT[name]}")
        print(f"prepare: on the host already: {', '.join(sorted(wanted.host))}")
        big = sorted(args.wheels.glob("*.whl"), key=lambda p: -p.stat().st_size)
        print(
            "prepare: largest wheels: "
            + ", ".join(f"{p.name.split('-')[0]} {p.stat().st_size / 2**20:.1f}" for p in big[:8])
            + " MiB"
        )
    if not args.skip_data:
        copy_data(args.shared_data, args.data)
    wheels, data = size_mib(args.wheels), size_mib(args.data)
    n = len(list(args.wheels.glob("*.whl"))) if args.wheels.exists() else 0
    print(
        f"prepare: wheels {wheels:.1f} MiB ({n} files, {args.wheels}), data {data:.1f} MiB "
        f"({args.data}), total {wheels + data:.1f} MiB"
    )
    over = []
    if wheels > args.max_mib:
        over.append(f"the wheels exceed --max-mib {args.max_mib:g}")
    if wheels + data > args.max_total_mib:
        over.append(f"wheels + data exceed --max-total-mib {args.max_total_mib:g}")
    if over:
        limits = "; ".join(over)
        raise SystemExit(f"prepare: {limits} (the checkout carries 64 MiB of ignored files)")
    print("prepare: now copy the whole checkout (with both folders) to the GPU host and run")
    print("    bash bench/gpu_campaign.sh OUTDIR")


if __name__ == "__main__":
    main()
