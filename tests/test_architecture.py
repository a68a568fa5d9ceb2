"""The shape of the code: no import cycles in the core, every imported package declared.

``make check`` also runs ``lint-imports`` (contracts in ``.importlinter``); these tests
check the same acyclicity with ``grimp`` (import-linter's graph library) and that every
third-party package imported by ``fedsim``, ``strategies`` or ``clients`` is a declared
dependency in ``pyproject.toml``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (the dev extra)")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedsim", "strategies", "clients", "protocols")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_fedsim_modules() -> None:
    graph = grimp.build_graph("fedsim", exclude_type_checking_imports=True)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(edges) == []


def _third_party_imports() -> dict[str, str]:
    """Top-level name of every absolute non-stdlib import -> one file importing it."""
    found: dict[str, str] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PACKAGES:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _declared() -> set[str]:
    import tomli

    project = tomli.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the optional extras' packages count: fedsim imports them lazily, behind a feature
    deps = [*project["dependencies"], *project["optional-dependencies"]["datasets"]]
    return {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def test_every_imported_package_is_declared() -> None:
    dists = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = {}
    for top, where in _third_party_imports().items():
        names = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
        if not names & declared:
            missing[top] = where
    assert missing == {}, f"imported but not in pyproject.toml's dependencies: {missing}"


#: the core's modules stay short (one concern each); an algorithm's halves may be longer
LINE_LIMITS = {"fedsim": 400, "strategies": 500, "clients": 500, "protocols": 500}


@pytest.mark.parametrize("package", list(LINE_LIMITS))
def test_no_module_over_its_line_limit(package: str) -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > LINE_LIMITS[package]
    }
    assert not long, f"split these modules by concern: {long}"


def test_run_help_imports_no_torch_flower_or_data_stack() -> None:
    import subprocess

    code = (
        "import contextlib, io, sys\n"
        "sys.argv = ['fedsim', 'run', '--help']\n"
        "from fedsim.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'strategy: ' in out.getvalue(), out.getvalue()\n"
        "heavy = ('torch', 'flwr', 'numpy', 'sklearn', 'scipy', 'matplotlib',\n"
        "         'tensorboard', 'ray', 'optuna', 'datasets', 'flwr_datasets')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_run_that_uses_neither_imports_optuna_or_the_datasets_stack() -> None:
    """Optuna (fedsim tune) and Hugging Face datasets / Flower Datasets (scenario files that
    name them) cost seconds to import: a plain run must not pay for them."""
    import subprocess

    code = (
        "import sys, tempfile\n"
        "from fedsim.cli import main\n"
        "out = tempfile.mkdtemp()\n"
        "rc = main(['run', 'rounds=1', 'scenario.num_clients=2', 'backbone=mlp',\n"
        "           'progress=false', 'runtime.threads=1', f'output_dir={out}'])\n"
        "assert rc == 0, rc\n"
        "print(sorted(m for m in ('optuna', 'datasets', 'flwr_datasets', 'pyarrow')\n"
        "             if m in sys.modules))\n"
    )
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
