"""fedsim on a CUDA device: the same training as on the CPU, on the device, without host copies.

Every test here needs CUDA and skips without it; ``bench/gpu_campaign.sh`` runs them
(``pytest -m gpu``) on a GPU host.  Comparisons turn TF32 off (cuDNN uses it for
convolutions by default), so that the GPU and the CPU both compute in float32.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.algorithms.training import batches, evaluate_model, make_optimizer, train_local
from fedsim.config import AugmentConfig, BackboneConfig, TrainConfig
from fedsim.models.modelzoo import initial_model

pytestmark = pytest.mark.gpu

SHAPE = (3, 32, 32)  # CIFAR-shaped images, the campaign's workload


@pytest.fixture(autouse=True)
def _cuda_float32() -> Iterator[None]:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _data(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def _model(name: str, width: float = 0.25) -> nn.Module:
    return initial_model(BackboneConfig(name=name, width=width), SHAPE, 10, seed=0)


def _train(
    name: str,
    device: str,
    cfg: TrainConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str = "fp32",
) -> tuple[nn.Module, float]:
    model = _model(name).to(device)
    opt = make_optimizer(model, cfg)
    stats = train_local(
        model, x, y, cfg, opt, torch.Generator().manual_seed(5), torch.device(device), precision
    )
    return model, stats.loss


def _htod_bytes(fn: Callable[[], Any], trace: Path) -> tuple[int, int]:
    """Bytes and count of host-to-device copies while ``fn`` runs (CUDA profiler trace)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    copies = [
        e
        for e in events
        if e.get("cat") == "gpu_memcpy"
        and "HtoD" in e.get("name", "")
        and "bytes" in e.get("args", {})
    ]
    return sum(int(e["args"]["bytes"]) for e in copies), len(copies)


# --------------------------------------------------------------------------- same training


@pytest.mark.parametrize("name", ["cnn_digits", "resnet18"])
def test_local_steps_on_cuda_match_the_cpu(name: str) -> None:
    # Arrange: 4 SGD steps of 16 images from the same initial weights and batch order
    x, y = _data(64)
    cfg = TrainConfig(batch_size=16, local_steps=4, lr=0.05, momentum=0.9)

    # Act
    cpu, cpu_loss = _train(name, "cpu", cfg, x, y)
    gpu, gpu_loss = _train(name, "cuda", cfg, x, y)

    # Assert: every parameter and buffer (batch-norm statistics included) agrees
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-4)
    init = _model(name).state_dict()
    for (k, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values(), strict=True):
        assert b.device.type == "cuda", k
        if a.is_floating_point():
            assert torch.allclose(b.cpu(), a, rtol=1e-3, atol=1e-4), (k, (b.cpu() - a).abs().max())
        else:
            assert torch.equal(b.cpu(), a), k
    trained = [
        k for k, v in cpu.state_dict().items() if v.is_floating_point() and not v.equal(init[k])
    ]
    assert trained  # it did train


# --------------------------------------------------------------------------- vectorised


def _scenario(tmp_path: Path, clients: int, per_client: int) -> Path:
    """``clients`` IID clients of ``per_client`` random 32x32 RGB images, all in each round."""
    rng = np.random.default_rng(0)
    n = clients * per_client + 100
    npz = tmp_path / "images.npz"
    np.savez(npz, x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, n))
    scn = tmp_path / "gpu_test.yaml"
    scn.write_text(
        f"""name: gpu_test
num_clients: {clients}
dataset:
  sources: [{{name: images, format: npz, train: {npz}}}]
  test_fraction: {100 / n:.6f}
partition: {{kind: iid}}
participation: {{clients_per_round: {clients}}}
evaluation: {{holdout_fraction: 0.0, fraction: 0.0, global_test: true}}
"""
    )
    return scn


def _rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(record["run_dir"]) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(tmp_path: Path, name: str, *extra: str) -> list[dict[str, Any]]:
    from fedsim.engine.conf import compose
    from fedsim.engine.runner import execute

    cfg = compose(
        [
            f"scenario={_scenario(tmp_path, 4, 30)}",
            f"output_dir={tmp_path / name}",
            "progress=false",
            "rounds=2",
            "device=cuda",
            "runtime.threads=1",
            "train.batch_size=10",
            *extra,
        ]
    )
    return _rows(execute(cfg))


@pytest.mark.parametrize(
    ("backbone", "extra"),
    [
        ("cnn_cifar", ()),  # no batch norm: a whole local epoch
        # batch norm: one step per round (test_vectorize.py: over an epoch the batched
        # float32 batch-norm gradient drifts from the eager one on any device)
        ("cnn_digits", ("train.local_steps=1",)),
    ],
)
def test_vectorised_clients_on_cuda_match_sequential(
    tmp_path: Path, backbone: str, extra: tuple[str, ...]
) -> None:
    common = (f"backbone={backbone}", "backbone.width=0.25", *extra)
    off = _run(tmp_path, "off", *common)
    on = _run(tmp_path, "on", *common, "runtime.vectorize=on")  # "on" refuses to fall back
    assert [r["round"] for r in on] == [1, 2]
    for key in ("train/loss", "eval/global_loss"):
        assert [r[key] for r in on] == pytest.approx([r[key] for r in off], abs=1e-4), key


# --------------------------------------------------------------------------- bf16


@pytest.mark.parametrize(("name", "width"), [("cnn_cifar", 1.0), ("resnet18", 0.25)])
def test_bf16_autocast_trains(name: str, width: float) -> None:
    # Arrange: 64 noisy copies of 10 class prototypes to fit; a hook records the dtype the
    # first layer computes in (on the CPU in float32 both models reach < 0.05 of the start)
    g = torch.Generator().manual_seed(3)
    y = torch.arange(64) % 10
    x = torch.randn(10, *SHAPE, generator=g)[y] + 0.5 * torch.randn(64, *SHAPE, generator=g)
    model = _model(name, width).cuda()
    before = evaluate_model(model, x, y, torch.device("cuda"))[1]
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    seen: list[torch.dtype] = []
    hook = first.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    cfg = TrainConfig(batch_size=16, local_steps=60, lr=0.02, momentum=0.9)

    # Act
    stats = train_local(
        model, x, y, cfg, make_optimizer(model, cfg), torch.Generator().manual_seed(5),
        torch.device("cuda"), "bf16",
    )  # fmt: skip
    hook.remove()
    after = evaluate_model(model, x, y, torch.device("cuda"))[1]

    # Assert: every step computed in bf16 (the weights stay float32), and the loss fell
    assert len(seen) == 60 and set(seen) == {torch.bfloat16}, seen[:3]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert np.isfinite(stats.loss)
    assert after < 0.5 * before, (before, after)


# --------------------------------------------------------------------------- data on the device


def test_a_clients_data_cross_to_the_device_once_not_per_batch(tmp_path: Path) -> None:
    # Arrange: 200 CPU images, 4 local epochs of batch 10 (80 batches); copying batch by
    # batch would move the data 4 times
    x, y = _data(200)
    model = _model("cnn_cifar").cuda()
    cfg = TrainConfig(batch_size=10, local_epochs=4, lr=0.05)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(5)

    # Act
    moved, copies = _htod_bytes(
        lambda: train_local(model, x, y, cfg, opt, gen, torch.device("cuda")), tmp_path / "t.json"
    )

    # Assert: one copy of the data, plus the batches' index tensors (80 bytes each)
    data = x.nbytes + y.nbytes
    assert copies > 0, "the profiler saw no host-to-device copy at all"
    assert data <= moved < 1.2 * data, (moved, data)


def test_vectorised_round_gathers_batches_on_the_device(tmp_path: Path) -> None:
    from fedsim.algorithms.training import TrainHooks
    from fedsim.algorithms.vmap_train import make_job, train_jobs

    # Arrange: 3 clients of 100 CPU images, 3 epochs each, trained as one batched group
    model = _model("cnn_cifar").cuda()
    cfg = TrainConfig(batch_size=10, local_epochs=3, lr=0.05)
    data = [_data(100, seed) for seed in range(3)]
    jobs = []
    for i, (x, y) in enumerate(data):
        plan = batches(
            len(y), cfg.batch_size, cfg.local_epochs, 0, torch.Generator().manual_seed(i)
        )
        opt = make_optimizer(model, cfg)
        jobs.append(make_job(model, opt, x, y, plan, torch.device("cuda"), "fp32", TrainHooks()))

    # Act
    moved, copies = _htod_bytes(lambda: train_jobs(jobs), tmp_path / "t.json")

    # Assert: the round's data once (plus index tensors), not once per epoch
    total = sum(x.nbytes + y.nbytes for x, y in data)
    assert copies > 0 and all(j.stats is not None for j in jobs)
    assert total <= moved < 1.2 * total, (moved, total)


def test_augmentation_runs_on_the_device(tmp_path: Path) -> None:
    from fedsim.data.augment import build_augmenter

    # Arrange: every op of the simclr recipe plus pad-and-crop, on a CUDA batch
    aug = build_augmenter(
        AugmentConfig(recipe="simclr", crop_padding=4),
        torch.tensor([0.5] * 3),
        torch.tensor([0.25] * 3),
    )
    assert aug is not None
    x = _data(256)[0].cuda()
    out: list[torch.Tensor] = []

    # Act
    moved, _ = _htod_bytes(
        lambda: out.append(aug(x, torch.Generator().manual_seed(0))), tmp_path / "t.json"
    )

    # Assert: the result is on the device, and only the random draws crossed (a few
    # dozen bytes per image), never the images (12 KiB each)
    assert out[0].device == x.device and out[0].shape == x.shape
    assert torch.isfinite(out[0]).all() and not torch.equal(out[0], x)
    assert moved < 0.05 * x.nbytes, (moved, x.nbytes)


# --------------------------------------------------------------------------- Ray


@pytest.mark.timeout(300)
def test_ray_clients_share_one_gpu_with_fractional_client_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = "Ray left out of the campaign's wheels (scripts/prepare_gpu_campaign.py --with-ray)"
    pytest.importorskip("ray", reason=why)
    from flwr.simulation.ray_transport import ray_actor

    # Arrange: 4 clients per round, a quarter of the GPU each.  Flower's Ray backend sizes
    # its actor pool from the resources (in this process); record what it decided.  The
    # actors are other processes: TF32 goes off there through the environment they inherit.
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    sized = ray_actor.pool_size_from_resources
    pools: list[int] = []

    def recording(client_resources: dict[str, Any]) -> int:
        pools.append(sized(client_resources))
        return pools[-1]

    monkeypatch.setattr(ray_actor, "pool_size_from_resources", recording)
    common = ("backbone=cnn_cifar", "backbone.width=0.25")

    # Act
    ray = _run(tmp_path, "ray", *common, "runtime=ray", "runtime.client_gpus=0.25",
               "runtime.client_cpus=1")  # fmt: skip
    inline = _run(tmp_path, "inline", *common)

    # Assert: several actors on the one GPU, and the same training as in this process
    assert pools, "Flower's Ray backend did not size an actor pool in this process"
    assert pools[-1] >= min(4, os.cpu_count() or 1) >= 2, pools
    assert [r["round"] for r in ray] == [1, 2]
    for key in ("train/loss", "eval/global_loss"):
        assert [r[key] for r in ray] == pytest.approx([r[key] for r in inline], abs=1e-3), key
