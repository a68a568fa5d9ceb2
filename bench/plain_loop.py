"""The floor: FedAvg as a plain PyTorch loop, doing exactly fedsim's local training.

Same data tensors, partitions, initial weights, client sampling, batch order
(``torch_generator(seed, "train", round, client)``) and optimiser as ``fedsim run``, but no
Flower, no messages, no serialisation, no tracking: one model object, weights copied in
and averaged with ``torch`` ops.  Its final accuracy matches fedsim's to float noise,
which shows the two do the same work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fedsim.algorithms.training import evaluate_model, make_optimizer, train_local
from fedsim.config import RunConfig
from fedsim.data.federation import load_federation
from fedsim.data.participation import ParticipationSampler
from fedsim.models.modelzoo import initial_model, resolve_device
from fedsim.seeding import torch_generator


@dataclass
class PlainResult:
    loop_s: float  # the round loop (training + aggregation + final evaluation)
    setup_s: float  # data, partition and model construction
    final_acc: float | None  # mean over clients of held-out accuracy (as eval/acc)
    global_acc: float | None  # the global model on the global test set (as eval/global_acc)


def run_plain(cfg: RunConfig) -> PlainResult:
    t0 = time.perf_counter()
    if cfg.runtime.threads > 0:
        torch.set_num_threads(cfg.runtime.threads)
    fed = load_federation(cfg.scenario, cfg.seed)
    device = resolve_device(cfg.device)
    model = initial_model(cfg.backbone, fed.data.input_shape, fed.data.num_classes, cfg.seed).to(
        device
    )
    sampler = ParticipationSampler(cfg.scenario.participation, cfg.scenario.num_clients, cfg.seed)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    data = {pid: fed.client(pid) for pid in range(cfg.scenario.num_clients)}
    t1 = time.perf_counter()
    for rnd in range(1, cfg.rounds + 1):
        plan = sampler.plan(rnd)
        states, weights = [], []
        for pid in plan.selected.tolist():
            d = data[pid]
            model.load_state_dict(global_state)
            opt = make_optimizer(model, cfg.train)
            gen = torch_generator(cfg.seed, "train", rnd, pid)
            train_local(model, d.x, d.y, cfg.train, opt, gen, device, cfg.precision)
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(len(d.y))
        total = float(sum(weights))
        for key, ref in global_state.items():
            acc = sum(s[key].double() * (w / total) for s, w in zip(states, weights, strict=True))
            global_state[key] = (
                acc.round().to(ref.dtype) if not ref.is_floating_point() else acc.to(ref.dtype)
            )
    model.load_state_dict(global_state)
    ev = cfg.scenario.evaluation
    accs = (
        [evaluate_model(model, d.x_holdout, d.y_holdout, device)[0] for d in data.values()]
        if ev.fraction > 0
        else []
    )
    gacc = (
        evaluate_model(model, fed.data.test_x, fed.data.test_y, device)[0]
        if ev.global_test
        else None
    )
    t2 = time.perf_counter()
    return PlainResult(t2 - t1, t1 - t0, sum(accs) / len(accs) if accs else None, gacc)
