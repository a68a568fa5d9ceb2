"""``fedsim pretrain``: the NT-Xent loss, a checkpoint a run can start from, resuming."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from fedsim import pretrain
from fedsim.pretrain import PretrainConfig, nt_xent, run_pretrain


def test_nt_xent_by_hand() -> None:
    # two pairs of unit vectors; with z1 == z2 each anchor's positive has cosine 1
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = z1.clone()
    t = 0.5
    # anchor 0: positive (index 2) sim 1/t, negatives: index 1 (cos 0), index 3 (cos 0)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * math.exp(0)))
    assert float(nt_xent(z1, z2, t)) == pytest.approx(expected, rel=1e-6)
    swapped = nt_xent(z1, z2.flip(0), t)  # positives now orthogonal: a worse loss
    assert float(swapped) > float(nt_xent(z1, z2, t))


def _cfg(fast_cfg: Any) -> Any:
    return fast_cfg("runtime.threads=1")


def test_pretrained_checkpoint_starts_a_run(fast_cfg: Any, tmp_path: Path) -> None:
    from fedsim.engine.runner import execute
    from fedsim.models.modelzoo import initial_model

    cfg = _cfg(fast_cfg)
    out = tmp_path / "simclr.pt"
    pc = PretrainConfig(str(out), epochs=2, batch_size=64, max_images=256)
    result = run_pretrain(pc, cfg)
    assert math.isfinite(result["pretrain/loss"])
    saved = torch.load(out, weights_only=True)
    assert not any(k.startswith("head.") for k in saved["model"])
    assert not (tmp_path / "simclr.pt.partial").exists()
    assert list((tmp_path / "simclr.pt.tb").iterdir())  # the TensorBoard loss
    seeded = initial_model(cfg.backbone, (1, 8, 8), 10, cfg.seed)
    assert not torch.equal(saved["model"]["conv1.weight"], seeded.state_dict()["conv1.weight"])
    run = fast_cfg("rounds=1", f"backbone.checkpoint={out}", "train.trainable=[head]")
    rec = execute(run)
    final = torch.load(Path(rec["run_dir"]) / "final_model.pt", weights_only=True)
    assert torch.equal(final["conv1.weight"], saved["model"]["conv1.weight"])  # frozen, loaded


def test_an_interrupted_pretraining_resumes_to_the_same_weights(
    fast_cfg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(fast_cfg)
    straight = PretrainConfig(str(tmp_path / "a.pt"), epochs=3, batch_size=64, max_images=192)
    run_pretrain(straight, cfg)
    resumed = PretrainConfig(str(tmp_path / "b.pt"), epochs=3, batch_size=64, max_images=192)
    real_save = pretrain._save_atomic
    saves = {"n": 0}

    def crash_after_two_epochs(path: Path, obj: Any) -> None:
        real_save(path, obj)
        saves["n"] += 1
        if saves["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "_save_atomic", crash_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(resumed, cfg)
    monkeypatch.setattr(pretrain, "_save_atomic", real_save)
    partial = torch.load(tmp_path / "b.pt.partial", weights_only=False)
    assert partial["epoch"] == 2
    run_pretrain(resumed, cfg)
    a = torch.load(tmp_path / "a.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_bad_pretrain_input_is_one_line(tmp_path: Path) -> None:
    def fedsim(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fedsim.cli", "pretrain", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    bad = fedsim("--out", str(tmp_path / "w.pt"), "--epochs", "0")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "fedsim: error: pretrain --epochs: must be >= 1, got 0"
    ]
    assert not (tmp_path / "w.pt").exists() and not list(tmp_path.iterdir())
    synthetic = fedsim("--out", str(tmp_path / "w.pt"), "scenario=masha_bilinear")
    assert synthetic.returncode == 2
    assert synthetic.stderr.strip().splitlines() == [
        "fedsim: error: scenario: 'masha_bilinear' has no images to pretrain on "
        "(task=bilinear); pretraining needs an image scenario (e.g. "
        "scenario=mnist_open_world)"
    ]
    folder = fedsim("--out", str(tmp_path), "--epochs", "1")
    assert folder.returncode == 2 and "must be a file path" in folder.stderr
    assert "Traceback" not in bad.stderr + folder.stderr
