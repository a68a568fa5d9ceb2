"""Flower Datasets partitioners and Hugging Face sources in scenario files.

Flower's Dirichlet and IID partitioners are checked against fedsim's own on the statistics
a partition is about (client sizes, class shares, label skew) over many seeds; local
Hugging Face copies (``save_to_disk``, parquet, image folder) made here from the shared
USPS ``.npz`` must load to the very arrays of that file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from fedsim.cli import main as cli_main
from fedsim.config import PartitionConfig, SourceConfig
from fedsim.config.scenario_files import fold_flat_keys
from fedsim.data.partition import partition
from fedsim.errors import ConfigError

pytest.importorskip("flwr_datasets", reason="the datasets extra: pip install -e '.[datasets]'")
datasets = pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[1]
USPS = ROOT.parent / "shared" / "data" / "digits" / "usps_train.npz"
TINY = ["rounds=2", "backbone=mlp", "progress=false", "runtime.threads=1"]
K, C, PER_CLASS, SEEDS = 10, 10, 300, 40
LABELS = np.repeat(np.arange(C), PER_CLASS)


def _stats(parts: list[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Client-size spread, spread of each class's shares over clients, mean label skew."""
    counts = np.stack([np.bincount(labels[p], minlength=C) for p in parts])  # K x C
    sizes = counts.sum(axis=1)
    shares = counts / counts.sum(axis=0, keepdims=True)  # each class's split over clients
    mix = counts / np.maximum(sizes[:, None], 1)
    glob = counts.sum(axis=0) / counts.sum()
    return {
        "size_cv": float(sizes.std() / sizes.mean()),
        "share_std": float(shares.std()),
        "label_tv": float(0.5 * np.abs(mix - glob).sum(axis=1).mean()),
    }


def _many(cfg: PartitionConfig) -> dict[str, np.ndarray]:
    rows = [
        _stats(partition(LABELS, None, K, cfg, np.random.default_rng(s)), LABELS)
        for s in range(SEEDS)
    ]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def _same(a: np.ndarray, b: np.ndarray) -> float:
    """Welch's t-test p-value of equal means."""
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_flower_and_fedsim_dirichlet_give_partitions_with_the_same_statistics() -> None:
    ours = _many(PartitionConfig(kind="dirichlet", alpha=0.5, min_samples=10))
    flower = _many(
        PartitionConfig(flwr="DirichletPartitioner", args={"alpha": 0.5, "min_partition_size": 10})
    )
    wider = _many(
        PartitionConfig(flwr="DirichletPartitioner", args={"alpha": 2.0, "min_partition_size": 10})
    )

    # Dir(alpha 1_K) shares of a class over K clients: std sqrt((K-1) / (K^2 (K alpha + 1)))
    theory = np.sqrt((K - 1) / (K**2 * (K * 0.5 + 1)))
    for key in ("size_cv", "share_std", "label_tv"):
        assert _same(ours[key], flower[key]) > 0.01, (key, ours[key].mean(), flower[key].mean())
        assert _same(flower[key], wider[key]) < 1e-6  # the statistic does tell alphas apart
    assert abs(ours["share_std"].mean() - theory) < 0.02
    assert abs(flower["share_std"].mean() - theory) < 0.02


def test_flower_and_fedsim_iid_give_equal_sizes_and_the_same_label_mixtures() -> None:
    ours = [
        partition(LABELS, None, 7, PartitionConfig(kind="iid"), np.random.default_rng(s))
        for s in range(SEEDS)
    ]
    flower_cfg = PartitionConfig(flwr="IidPartitioner")
    flower = [
        partition(LABELS, None, 7, flower_cfg, np.random.default_rng(s)) for s in range(SEEDS)
    ]

    for a, b in zip(ours, flower, strict=True):
        assert sorted(map(len, a)) == sorted(map(len, b))  # N // K or one more, both
        assert sorted(np.concatenate(b).tolist()) == list(range(LABELS.size))  # each once
    tv_ours = np.array([_stats(p, LABELS)["label_tv"] for p in ours])
    tv_flower = np.array([_stats(p, LABELS)["label_tv"] for p in flower])
    skewed = _many(PartitionConfig(kind="dirichlet", alpha=0.5, min_samples=10))["label_tv"]
    assert _same(tv_ours, tv_flower) > 0.01
    assert _same(tv_flower, skewed) < 1e-6


def test_a_flower_partition_is_seeded_by_the_generator_it_is_given() -> None:
    cfg = PartitionConfig(flwr="ShardPartitioner", args={"num_shards_per_partition": 2})

    one = partition(LABELS, None, K, cfg, np.random.default_rng(3))
    again = partition(LABELS, None, K, cfg, np.random.default_rng(3))
    other = partition(LABELS, None, K, cfg, np.random.default_rng(4))

    assert all(np.array_equal(a, b) for a, b in zip(one, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(one, other, strict=True))
    assert all(len(np.unique(LABELS[p])) <= 3 for p in one)  # two label-sorted shards each


def test_flat_keys_beside_flwr_are_the_partitioners_arguments() -> None:
    section = {"flwr": "DirichletPartitioner", "alpha": 0.5, "partition_by": "label"}

    assert fold_flat_keys(section) == {
        "flwr": "DirichletPartitioner",
        "args": {"alpha": 0.5, "partition_by": "label"},
    }
    assert fold_flat_keys({"kind": "iid", "alpha": 1}) == {"kind": "iid", "alpha": 1}
    with pytest.raises(ConfigError, match=r"partition\.alpha: given twice"):
        fold_flat_keys({"flwr": "X", "alpha": 1, "args": {"alpha": 2}})


def _scenario(tmp_path: Path, body: str, name: str = "s") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"# {name}: a test scenario\n{body}")
    return path


@pytest.mark.parametrize(
    ("partition_yaml", "message"),
    [
        (
            "{flwr: DirichletPartitionr, alpha: 0.5}",
            "partition.flwr: unknown 'DirichletPartitionr'",
        ),
        (
            "{flwr: DirichletPartitioner, alpha: 0.5, beta: 1}",
            "partition.beta: DirichletPartitioner does not take it",
        ),
        (
            "{flwr: DirichletPartitioner, alpha: 0.5, num_partitions: 3}",
            "partition.num_partitions: set by fedsim",
        ),
        (
            "{flwr: PathologicalPartitioner}",
            "partition.num_classes_per_partition: PathologicalPartitioner needs it",
        ),
        ("{flwr: DirichletPartitioner, alpha: -1}", "partition.flwr: DirichletPartitioner:"),
        ("{flwr: VerticalEvenPartitioner}", "unknown 'VerticalEvenPartitioner'"),
    ],
)
def test_a_bad_flower_partition_fails_in_one_line_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], partition_yaml: str, message: str
) -> None:
    path = _scenario(tmp_path, f"num_clients: 4\npartition: {partition_yaml}\n")
    out = tmp_path / "runs"

    rc = cli_main(["run", f"scenario={path}", f"output_dir={out}", *TINY])

    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_scenario_with_a_flower_partitioner_runs_end_to_end(tmp_path: Path) -> None:
    from fedsim.config.scenario_files import load_scenario_file
    from fedsim.data.federation import build_federation

    path = _scenario(
        tmp_path,
        "num_clients: 4\n"
        "partition: {flwr: DirichletPartitioner, alpha: 0.5, partition_by: label}\n",
        "flwr_dirichlet",
    )

    assert cli_main(["run", f"scenario={path}", f"output_dir={tmp_path}", *TINY]) == 0

    record = json.loads((tmp_path / "flwr_dirichlet/fedavg/seed-0/run.json").read_text())
    assert record["status"] == "complete"
    part = record["config"]["scenario"]["partition"]
    assert part["flwr"] == "DirichletPartitioner" and part["args"]["alpha"] == 0.5
    from omegaconf import OmegaConf

    scenario = OmegaConf.to_object(load_scenario_file(path))
    fed = build_federation(scenario, 0)  # type: ignore[arg-type]
    sizes = [len(t) + len(h) for t, h in zip(fed.train_parts, fed.holdout_parts, strict=True)]
    assert sum(sizes) == len(fed.data.train_y) and len(set(sizes)) > 1  # all used, skewed
    table = (tmp_path / "flwr_dirichlet/fedavg/seed-0/partition.txt").read_text()
    assert f"{sizes[0]:>9}" in table.splitlines()[2]


# --------------------------------------------------------------------------- HF sources


def _usps(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    if not USPS.is_file():
        pytest.skip(f"shared data missing: {USPS}")
    with np.load(USPS) as z:
        return z["x"][:n], z["y"][:n].astype(np.int64)


def _hf_dataset(x: np.ndarray, y: np.ndarray) -> Any:
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
    )
    return datasets.Dataset.from_dict({"image": list(x), "label": y}, features=features)


@pytest.fixture
def usps_copies(tmp_path: Path) -> dict[str, Any]:
    """The first 400 USPS images as a DatasetDict folder, a Dataset folder and a parquet
    file (train 300 / test 100), and as an image folder."""
    x, y = _usps()
    dd = datasets.DatasetDict(
        {"train": _hf_dataset(x[:300], y[:300]), "test": _hf_dataset(x[300:], y[300:])}
    )
    datasets.disable_progress_bars()
    dd.save_to_disk(str(tmp_path / "usps_dd"))
    dd["train"].save_to_disk(str(tmp_path / "usps_ds"))
    dd["train"].to_parquet(str(tmp_path / "usps.parquet"))
    from PIL import Image

    for i, (img, label) in enumerate(zip(x[:300], y[:300], strict=True)):
        folder = tmp_path / "usps_folder" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return {"root": tmp_path, "x": x, "y": y}


def test_local_hugging_face_copies_load_to_the_arrays_of_the_npz(
    usps_copies: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedsim.data.sources import load_source

    root, x, y = usps_copies["root"], usps_copies["x"], usps_copies["y"]
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / "cache"))

    dd = load_source(SourceConfig(name="u", format="hf", train="usps_dd", test="usps_dd"), root)
    one = load_source(SourceConfig(name="u", format="hf", train=str(root / "usps_ds")), root)
    pq = load_source(SourceConfig(name="u", format="hf", train="usps.parquet"), root)
    test_split = load_source(SourceConfig(name="u", format="hf", train="usps_dd:test"), root)
    folder = load_source(SourceConfig(name="u", format="hf", train="usps_folder"), root)

    for raw in (dd, one, pq):
        assert raw.train_x.dtype == np.uint8 and raw.train_x.shape == (300, 16, 16)
        assert np.array_equal(raw.train_x, x[:300]) and np.array_equal(raw.train_y, y[:300])
    assert dd.test_x is not None and np.array_equal(dd.test_x, x[300:])
    assert np.array_equal(test_split.train_y, y[300:])
    # an image folder numbers its classes by folder name: the same images, the same counts
    assert folder.train_x.shape == (300, 16, 16)
    assert np.array_equal(
        np.sort(folder.train_x.reshape(300, -1), axis=0), np.sort(x[:300].reshape(300, -1), axis=0)
    )
    assert sorted(np.bincount(folder.train_y)) == sorted(
        np.bincount(y[:300])[np.bincount(y[:300]) > 0]
    )


def test_a_scenario_with_a_local_hugging_face_dataset_runs_end_to_end(
    usps_copies: dict[str, Any],
) -> None:
    root = usps_copies["root"]
    path = _scenario(
        root,
        f"num_clients: 3\ndataset:\n  data_root: {root}\n  sources:\n"
        "    - {name: usps, format: hf, train: usps_dd, test: usps_dd}\n"
        "partition: {flwr: IidPartitioner}\n",
        "usps_hf",
    )

    assert cli_main(["run", f"scenario={path}", f"output_dir={root / 'runs'}", *TINY]) == 0

    record = json.loads((root / "runs/usps_hf/fedavg/seed-0/run.json").read_text())
    assert record["status"] == "complete"
    assert record["config"]["scenario"]["dataset"]["sources"][0]["format"] == "hf"
    assert 0.0 <= record["final"]["eval/global_acc"] <= 1.0  # scored on the 100 test images


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            "ylecun/mnist",
            "Hugging Face dataset 'ylecun/mnist': the Hub (hub.invalid) cannot be reached",
        ),
        ("usps_dd:validation", "no split 'validation' in"),
        ("./nowhere/usps", "not found:"),
    ],
)
def test_a_hugging_face_source_that_cannot_load_fails_in_one_line(
    usps_copies: dict[str, Any], train: str, message: str
) -> None:
    root = usps_copies["root"]
    path = _scenario(
        root,
        f"dataset:\n  data_root: {root}\n  sources:\n"
        f"    - {{name: d, format: hf, train: {train}}}\n",
        "hub",
    )
    env = {**os.environ, "HF_ENDPOINT": "https://hub.invalid", "FLWR_TELEMETRY_ENABLED": "0"}
    cmd = [sys.executable, "-m", "fedsim.cli", "run", f"scenario={path}"]

    done = subprocess.run(
        [*cmd, f"output_dir={root / 'runs'}", *TINY],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )

    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (root / "runs").exists()
