"""Image classification, fedsim's default task (``scenario.task=classification``).

The scenario's dataset is loaded, shifted and partitioned over the clients
(:mod:`fedsim.data.federation`) and every client trains the backbone (:mod:`fedsim.models.modelzoo`)
with the one training loop; clients report accuracy and loss, the server the global
model's (``eval/acc``, ``eval/global_acc``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.algorithms.task import Task, Workload, scenario_error
from fedsim.errors import UserError

if TYPE_CHECKING:
    from fedsim.config import RunConfig


class Classification(Task):
    """The scenario's images and labels, a backbone with a classification head."""

    def validate(self, cfg: RunConfig) -> None:
        from fedsim.data.dataset_checks import validate_dataset
        from fedsim.data.partition_checks import validate_partition

        s = cfg.scenario
        validate_dataset(s.dataset)
        if not s.open_world.enabled:  # open-world scenarios split by class sets instead
            # Sample counts are unknown before loading: only the data-free checks here.
            validate_partition(s.partition, s.num_clients, 1 << 62, len(s.dataset.sources))

    def workload(self, cfg: RunConfig) -> Workload:
        from fedsim.data.federation import load_federation
        from fedsim.models.modelzoo import initial_model

        try:
            fed = load_federation(cfg.scenario, cfg.seed)
        except UserError as e:  # say which scenario file the bad value came from
            raise scenario_error(e, cfg) from None
        model = initial_model(
            cfg.backbone,
            fed.data.input_shape,
            fed.data.num_classes,
            cfg.seed,
            cfg.train.trainable,
        )
        return Workload(fed, model)


CLASSIFICATION = Classification()
