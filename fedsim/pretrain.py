"""``fedsim pretrain``: self-supervised SimCLR pretraining of a backbone.

SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, arXiv 2002.05709): two augmented views of every image
(``train.augment`` recipe ``simclr`` by default), the backbone's embedding through a
two-layer projection MLP, and the NT-Xent loss at temperature ``tau`` over the 2N views
of a batch.  FedoSSL's official run starts from such weights and trains only the last
block and the head; this command writes the state dict that ``backbone.checkpoint`` reads
(the backbone without the projection MLP and with its seeded classifier head left out).

The images are the scenario's pooled *training* parts of every client (never held-out,
validation or test samples, and never their labels).  The run is resumable: a partial
checkpoint beside the output (``<out>.partial``) holds the epoch, model, projector,
optimiser and generator state; the same command continues from it.  The loss goes to
TensorBoard under ``<out>.tb/`` (``pretrain/loss``).
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.algorithms import optim
from fedsim.config import AugmentConfig, RunConfig
from fedsim.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """What ``fedsim pretrain`` takes besides the run configuration's overrides."""

    out: str
    epochs: int = 20
    batch_size: int = 256
    lr: float = 0.3  # SGD with momentum 0.9, cosine over the epochs
    weight_decay: float = 1e-4
    temperature: float = 0.5
    proj_dim: int = 128
    max_images: int = 0  # > 0: a seeded subset of the pooled images (quick checks)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (normalised temperature-scaled cross entropy) over the 2N views.

    Row ``i`` of ``z1`` and row ``i`` of ``z2`` are the positive pair; the other 2N - 2
    views are negatives.  Equation (1) of the SimCLR paper, averaged over all 2N anchors.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))  # a view is never its own negative
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class Projector(nn.Module):
    """SimCLR's projection head g(.): Linear -> ReLU -> Linear."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def validate(pc: PretrainConfig, cfg: RunConfig) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(pc.epochs >= 1, f"pretrain --epochs: must be >= 1, got {pc.epochs}")
    need(pc.batch_size >= 2, f"pretrain --batch-size: must be >= 2, got {pc.batch_size}")
    need(math.isfinite(pc.lr) and pc.lr > 0, f"pretrain --lr: must be > 0, got {pc.lr}")
    need(
        math.isfinite(pc.temperature) and pc.temperature > 0,
        f"pretrain --temperature: must be > 0, got {pc.temperature}",
    )
    need(pc.proj_dim >= 1, f"pretrain --proj-dim: must be >= 1, got {pc.proj_dim}")
    need(pc.max_images >= 0, f"pretrain --max-images: must be >= 0, got {pc.max_images}")
    from fedsim.algorithms.task import task_of

    need(
        task_of(cfg).trains_network,
        f"pretrain: scenario '{cfg.scenario.name}' has no images (task={cfg.scenario.task})",
    )
    out = Path(pc.out)
    need(pc.out != "" and not out.is_dir(), f"pretrain --out: '{pc.out}' must be a file path")
    need(
        out.parent.exists() or not out.parent.is_file(),
        f"pretrain --out: the folder of '{pc.out}' is a file",
    )


def pooled_images(cfg: RunConfig) -> tuple[torch.Tensor, Any]:
    """Every client's training images (not held-out, validation or test), no labels."""
    import numpy as np

    from fedsim.data.federation import load_federation

    fed = load_federation(cfg.scenario, cfg.seed)
    idx = np.sort(np.concatenate(fed.train_parts)) if fed.train_parts else np.zeros(0, int)
    return fed.data.train_x[torch.from_numpy(idx)], fed.data


def run_pretrain(pc: PretrainConfig, cfg: RunConfig) -> dict[str, float]:
    """Pretrain and write ``pc.out``; returns the final epoch's mean loss."""
    from fedsim.data.augment import build_augmenter
    from fedsim.models.modelzoo import initial_model, resolve_device
    from fedsim.seeding import derive_seed, torch_generator

    validate(pc, cfg)
    device = resolve_device(cfg.device)
    images, data = pooled_images(cfg)
    if pc.max_images and len(images) > pc.max_images:
        pick = torch.randperm(len(images), generator=torch_generator(cfg.seed, "pretrain-subset"))
        images = images[pick[: pc.max_images]]
    if len(images) < 2:
        raise ConfigError(f"pretrain: scenario '{cfg.scenario.name}' has fewer than 2 images")
    recipe = cfg.train.augment if cfg.train.augment.recipe else AugmentConfig(recipe="simclr")
    augmenter = build_augmenter(recipe, data.mean.to(device), data.std.to(device))
    if augmenter is None:
        raise ConfigError("train.augment.recipe: pretraining needs augmentation (e.g. simclr)")
    model = initial_model(cfg.backbone, data.input_shape, data.num_classes, cfg.seed).to(device)
    with torch.random.fork_rng(devices=[]):  # seeded like the backbone, global RNG untouched
        torch.manual_seed(derive_seed(cfg.seed, "pretrain-projector"))
        proj = Projector(int(model.feature_dim), pc.proj_dim).to(device)
    params = [*model.parameters(), *proj.parameters()]
    opt = optim.sgd(params, lr=pc.lr, momentum=0.9, weight_decay=pc.weight_decay)
    out = Path(pc.out)
    partial = out.with_name(out.name + ".partial")
    start = 0
    if partial.exists():
        state = torch.load(partial, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        proj.load_state_dict(state["proj"])
        opt.load_state_dict(state["opt"])
        start = int(state["epoch"])
        log.info("pretrain: resuming after epoch %d (%s)", start, partial)
    writer = _writer(out)
    steps = max(1, len(images) // pc.batch_size)
    mean = float("nan")
    bar = _progress(pc.epochs, start)
    for epoch in range(start, pc.epochs):
        for g in opt.param_groups:  # cosine over the epochs
            g["lr"] = pc.lr * (1 + math.cos(math.pi * epoch / pc.epochs)) / 2
        gen = torch_generator(cfg.seed, "pretrain", epoch)
        aug_gen = torch_generator(cfg.seed, "pretrain-augment", epoch)
        perm = torch.randperm(len(images), generator=gen)
        model.train()
        proj.train()
        total = 0.0
        for s in range(steps):
            xb = images[perm[s * pc.batch_size : (s + 1) * pc.batch_size]].to(device)
            v1, v2 = augmenter(xb, aug_gen), augmenter(xb, aug_gen)
            loss = nt_xent(proj(model.features(v1)), proj(model.features(v2)), pc.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        mean = total / steps
        writer.add_scalar("pretrain/loss", mean, epoch + 1)
        writer.flush()
        _save_atomic(
            partial,
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "proj": proj.state_dict(),
                "opt": opt.state_dict(),
            },
        )
        bar.update(1)
        bar.set_postfix(loss=f"{mean:.3f}")
    bar.close()
    writer.close()
    backbone = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith("head.")}
    meta = {
        "scenario": cfg.scenario.name,
        "backbone": cfg.backbone.name,
        "width": cfg.backbone.width,
        "seed": cfg.seed,
        "epochs": pc.epochs,
        "images": len(images),
        "loss": mean,
    }
    _save_atomic(out, {"model": backbone, "meta": meta})
    partial.unlink(missing_ok=True)
    return {"pretrain/loss": mean}


def _save_atomic(path: Path, obj: Any) -> None:
    import io

    from fedsim.atomic import write_atomic

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def _writer(out: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out.with_name(out.name + ".tb")))


def _progress(total: int, done: int) -> Any:
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, scripts)
    return tqdm(total=total, initial=done, desc="pretrain", unit="epoch", leave=False, disable=None)


def _refuse_scenarios_without_images(overrides: list[str]) -> None:
    """A scenario whose task trains no network (``task``) has no images: say so before
    composing, whose own check would speak of the strategy instead."""
    from fedsim.config.scenario_files import load_scenario_file
    from fedsim.engine.conf import scenario_files

    name = next((o.split("=", 1)[1] for o in overrides if o.startswith("scenario=")), "")
    if not name:
        return
    path = scenario_files().get(name) or Path(name)
    if not path.is_file():
        return  # compose names the missing scenario
    from fedsim.algorithms.task import tasks

    kind = str(load_scenario_file(path).get("task", "classification"))
    task = tasks().get(kind)
    if task is not None and not task.trains_network:  # compose names an unknown task
        raise ConfigError(
            f"scenario: '{name}' has no images to pretrain on (task={kind}); "
            "pretraining needs an image scenario (e.g. scenario=mnist_open_world)"
        )


def main(args: list[str]) -> int:
    """``fedsim pretrain --out PATH [--epochs N ...] [key=value ...]``."""
    from fedsim.engine.conf import compose

    parser = argparse.ArgumentParser(
        prog="fedsim pretrain",
        description="SimCLR pretraining of a backbone on a scenario's pooled training images; "
        "writes the state dict that backbone.checkpoint=PATH reads.",
        epilog="example: fedsim pretrain scenario=mnist_open_world backbone=cnn_digits "
        "--epochs 20 --out runs/simclr_mnist.pt",
    )
    parser.add_argument("--out", required=True, help="the checkpoint file to write")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--proj-dim", type=int, default=128)
    parser.add_argument("--max-images", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="run configuration overrides (key=value)")
    try:
        ns = parser.parse_args(args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    _refuse_scenarios_without_images(ns.overrides)
    cfg = compose(ns.overrides)
    pc = PretrainConfig(
        ns.out,
        ns.epochs,
        ns.batch_size,
        ns.lr,
        ns.weight_decay,
        ns.temperature,
        ns.proj_dim,
        ns.max_images,
    )
    if cfg.runtime.threads > 0:
        torch.set_num_threads(cfg.runtime.threads)
    result = run_pretrain(pc, cfg)
    print(f"fedsim: pretrained {cfg.backbone.name}: pretrain/loss={result['pretrain/loss']:.4f}")
    print(f"fedsim: checkpoint {pc.out} (use backbone.checkpoint={pc.out})")
    return 0
