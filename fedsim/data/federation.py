"""The materialised federation: one in-memory copy of the data plus index arrays.

``build_federation(scenario, seed)`` loads the dataset and partitions it (a run does it once,
through its run context);
a client's data is a gather of its indices from the shared tensors (10,000 clients never
copy the dataset).  Synthetic feature shifts are applied to a client's samples when its
data is first gathered, and cached for a bounded number of clients.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from fedsim.config import ScenarioConfig
from fedsim.data.datasets import FederatedDataset, build_dataset
from fedsim.data.faults import flips_labels
from fedsim.data.openworld import open_world_split, validate_open_world
from fedsim.data.partition import partition, split_holdout
from fedsim.data.partition_checks import validate_partition
from fedsim.data.shift import apply_shift
from fedsim.seeding import derive_rng

_CACHE_LIMIT = 256


@dataclass
class ClientData:
    """One client's tensors (views or gathered copies of the shared data)."""

    x: torch.Tensor
    y: torch.Tensor
    x_holdout: torch.Tensor
    y_holdout: torch.Tensor
    domain: int
    labeled: torch.Tensor | None = None  # open world: bool per training sample (None = all)
    # evaluation.validation_fraction > 0: the selection split (never trained on)
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


@dataclass
class Federation:
    """Shared data, per-client train/held-out indices and the scenario they come from."""

    scenario: ScenarioConfig
    seed: int
    data: FederatedDataset
    train_parts: list[np.ndarray]
    holdout_parts: list[np.ndarray]
    labeled: np.ndarray | None = None  # open world: bool over the training set (None = all)
    val_parts: list[np.ndarray] | None = None  # evaluation.validation_fraction > 0
    _cache: OrderedDict[int, ClientData] = field(default_factory=OrderedDict, repr=False)
    _domain_tests: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_clients(self) -> int:
        return len(self.train_parts)

    def all_parts(self) -> list[np.ndarray]:
        """Every sample each client holds (training + held-out), for reports."""
        return [
            np.sort(np.concatenate([t, h]))
            for t, h in zip(self.train_parts, self.holdout_parts, strict=True)
        ]

    def domain_of(self, pid: int) -> int:
        if len(self.data.domains) == 1:  # one source: every sample is of domain 0
            return 0
        idx = np.concatenate([self.train_parts[pid], self.holdout_parts[pid]])
        if len(idx) == 0:
            return 0
        doms = self.data.train_domain[torch.from_numpy(idx)].numpy()
        return int(np.bincount(doms).argmax())

    def client(self, pid: int) -> ClientData:
        """The client's data; shifted copies are cached for a bounded number of clients."""
        with self._lock:
            if pid in self._cache:
                self._cache.move_to_end(pid)
                return self._cache[pid]
        tr = torch.from_numpy(self.train_parts[pid])
        ho = torch.from_numpy(self.holdout_parts[pid])
        x, y = self.data.train_x[tr], self.data.train_y[tr]
        xh, yh = self.data.train_x[ho], self.data.train_y[ho]
        shift = self.scenario.shift
        if shift.kind != "none" and (not shift.clients or pid in shift.clients):
            x = self._shift(x, pid)
            xh = self._shift(xh, pid)
        if flips_labels(self.scenario.faults, self.num_clients, self.seed, pid):
            y = self.data.num_classes - 1 - y  # a label-flipping attacker's training labels
        lab = None if self.labeled is None else torch.from_numpy(self.labeled[tr.numpy()])
        xv = yv = None
        if self.val_parts is not None:
            va = torch.from_numpy(self.val_parts[pid])
            xv, yv = self.data.train_x[va], self.data.train_y[va]
            if shift.kind != "none" and (not shift.clients or pid in shift.clients):
                xv = self._shift(xv, pid)
        item = ClientData(x, y, xh, yh, self.domain_of(pid), lab, xv, yv)
        with self._lock:
            self._cache[pid] = item
            while len(self._cache) > _CACHE_LIMIT:
                self._cache.popitem(last=False)
        return item

    def test_set(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What client ``pid``'s test metrics are scored on (``evaluation.test``).

        ``holdout``: its held-out share.  ``domain_file``: every sample of the global test
        set from its domain's source (the source's test file, or the share carved from its
        training file by ``dataset.test_fraction``), with the client's feature shift.
        """
        if self.scenario.evaluation.test != "domain_file":
            data = self.client(pid)
            return data.x_holdout, data.y_holdout
        dom = self.domain_of(pid)
        with self._lock:
            if dom not in self._domain_tests:
                mask = self.data.test_domain == dom
                self._domain_tests[dom] = (self.data.test_x[mask], self.data.test_y[mask])
            x, y = self._domain_tests[dom]
        shift = self.scenario.shift
        if shift.kind != "none" and (not shift.clients or pid in shift.clients):
            x = self._shift(x, pid)
        return x, y

    def _shift(self, x: torch.Tensor, pid: int) -> torch.Tensor:
        mean = self.data.mean.view(1, -1, 1, 1)
        std = self.data.std.view(1, -1, 1, 1)
        raw = x * std + mean  # back to the [0, 1] pixel scale the shifts are defined on
        shifted = apply_shift(raw, pid, self.scenario.shift, derive_rng(self.seed, "shift", pid))
        return (shifted - mean) / std


def load_federation(scenario: ScenarioConfig, seed: int) -> Federation:
    """The federation of a scenario and seed (built each call: a run's is built once, by
    its run context, :mod:`fedsim.engine.context`)."""
    return build_federation(scenario, seed)


def build_federation(scenario: ScenarioConfig, seed: int) -> Federation:
    """Load the data and partition it (deterministic given the scenario and seed)."""
    data = build_dataset(scenario.dataset, seed)
    labels = data.train_y.numpy()
    domains = data.train_domain.numpy()
    labeled = None
    if scenario.open_world.enabled:  # class sets per client + hidden labels (fedsim.data.openworld)
        validate_open_world(scenario.open_world, scenario.num_clients, data.num_classes)
        split = open_world_split(
            labels, scenario.open_world, data.num_classes, derive_rng(seed, "open_world")
        )
        parts, labeled = split.parts, split.labeled
    else:
        validate_partition(scenario.partition, scenario.num_clients, len(labels), len(data.domains))
        parts = partition(
            labels,
            domains,
            scenario.num_clients,
            scenario.partition,
            derive_rng(seed, "partition"),
            data.num_classes,
        )
    train_parts: list[np.ndarray] = []
    holdout_parts: list[np.ndarray] = []
    val = scenario.evaluation.validation_fraction
    val_parts: list[np.ndarray] | None = [] if val > 0 else None
    frac = scenario.evaluation.holdout_fraction
    for pid, idx in enumerate(parts):
        tr, ho = split_holdout(idx, frac, derive_rng(seed, "holdout", pid))
        if val_parts is not None:  # the selection split: out of the training part
            tr, va = split_holdout(tr, val, derive_rng(seed, "validation", pid))
            val_parts.append(va)
        train_parts.append(tr)
        holdout_parts.append(ho)
    return Federation(scenario, seed, data, train_parts, holdout_parts, labeled, val_parts)
