"""FRAug: Chen, Frikha, Krompass, Gu, Tresp, "FRAug: Tackling Federated Learning with
Non-IID Features via Representation Augmentation", ICCV 2023, arXiv 2205.14900.

Implementation spec: ``shared/specs/fraug.md`` (from the official code,
github.com/HaokunChen245/FRAug, commit 94f595a).

What runs where
---------------
Server (this module, :class:`FRAug`):

* averages the model (sample-size weighted) except the batch-norm *running statistics*,
  which stay on the clients (the code's ``model_share='no_bn_running_stats'``); with
  ``strategy.local_bn=all`` every batch-norm tensor stays local, as in FedBN (one rule
  for both halves: :func:`protocols.fraug.local_keys`, the server's ``ctx.local_keys``);
* averages the shared generator ``G`` (noise + one-hot label -> client-agnostic embedding)
  with the same weights and broadcasts all of it (``model_share_G='all'``); the generator
  travels as an extra ``ArrayRecord`` (:class:`GeneratorPayload`);
* sends the round's augmentation schedule ``rho_t = exp(gamma (t - T))`` and
  ``lambda_t = min(0.5, rho_t)`` (:func:`rho_schedule`, :func:`lambda_schedule`).

Client (``clients.fraug``): the three alternating updates of every local iteration —
model (CE on real and synthetic embeddings, the latter train only the head), generator,
RTNet — and everything that never leaves the client: the RTNet, the EMA class
prototypes, the generator/RTNet optimizer states (and the BN running statistics).

Deviations and paper-vs-code choices (spec §10), all config switches
--------------------------------------------------------------------
* ``noise``: ``uniform`` U[0, 1) (official code, default) or ``gaussian`` N(0, I) (paper).
* ``local_bn``: ``running_stats`` (code, default: BN affine weights are averaged) or
  ``all`` (FedBN-style, as the paper describes).
* ``local_iterations``: the code counts local work in mini-batch *iterations* (its
  ``local_epochs`` is a number of batches); the default ``20`` is its Digits setting and
  applies when ``train.local_steps`` is 0.  ``train.local_steps=N`` overrides it;
  ``local_iterations=0`` means real epochs (``train.local_epochs``), as in FedBN.
* The code aggregates at the start of each round (round 0 averages identical initial
  generators); here the clients build the identical seeded generator in round 1 and the
  server averages and broadcasts it from round 2 on — the same sequence of models.
* The code reports the best validation accuracy over rounds; fedsim logs every
  evaluated round and reports the last one.
* Only the ``entropy`` RTNet criterion is implemented (the code's default); the
  ``nonsatCE`` alternative is not.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedsim.algorithms.aggregate import is_finite_update, weighted_average
from fedsim.algorithms.payloads import Scalar, TrainRes
from fedsim.algorithms.strategy import ServerContext, Strategy
from fedsim.records import arrays_from_numpy, numpy_from_arrays
from protocols.fraug import (
    LAMBDA_KEY,
    RHO_KEY,
    FRAugConfig,
    GeneratorPayload,
    lambda_schedule,
    rho_schedule,
)

# --------------------------------------------------------------------------- strategy


class FRAug(Strategy):
    """FedAvg of the model (BN statistics local) and of the shared generator."""

    # the averaged arrays lack the clients' BN statistics: evaluation is per client
    has_global_model = False

    def __init__(self, ctx: ServerContext) -> None:
        assert isinstance(ctx.cfg.strategy, FRAugConfig)
        super().__init__(ctx)
        self.fraug = ctx.cfg.strategy
        self.generator: dict[str, np.ndarray] = {}  # empty until the first aggregation

    def train_config(self, server_round: int) -> dict[str, Scalar]:
        rho = rho_schedule(server_round, self.ctx.cfg.rounds, self.fraug.gamma)
        return {RHO_KEY: rho, LAMBDA_KEY: lambda_schedule(rho)}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.generator:
            extra = GeneratorPayload(arrays_from_numpy(self.generator)).to_extra()
            for msg in messages:
                for name, record in extra.items():
                    msg.content[name] = record
        return messages

    def aggregate_arrays(self, results: list[tuple[int, TrainRes]]) -> dict[str, np.ndarray]:
        gens = [
            (numpy_from_arrays(p.arrays), res.num_examples)
            for _, res in results
            if (p := GeneratorPayload.from_extra(res.extra)) is not None
        ]
        gens = [(g, n) for g, n in gens if is_finite_update(g)]
        if gens:
            self.generator = weighted_average([g for g, _ in gens], [n for _, n in gens])
        return super().aggregate_arrays(results)

    def round_metrics(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        rho = rho_schedule(server_round, self.ctx.cfg.rounds, self.fraug.gamma)
        return {"fraug/rho": rho, "fraug/lambda": lambda_schedule(rho)}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"generator/{k}": v for k, v in self.generator.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.generator = {
            k.removeprefix("generator/"): v for k, v in state.items() if k.startswith("generator/")
        }


__all__ = [
    "FRAug",
    "FRAugConfig",
    "GeneratorPayload",
    "lambda_schedule",
    "rho_schedule",
]
