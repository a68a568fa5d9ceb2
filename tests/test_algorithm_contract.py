"""The contract between an algorithm's server half and fedsim's wrapper
(``fedsim.algorithms.strategy.Algorithm``): found by type, never by attribute names, also inside
Flower's differential-privacy wrappers; the round's global arrays are the wrapper's one
copy, which an algorithm such as SCAFFOLD reads from its context."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAdam
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsim.algorithms.strategy import Algorithm, ServerContext, Strategy
from fedsim.algorithms.wrap.server import FlowerAlgorithm, algorithm_of
from fedsim.algorithms.wrap.state import flower_state
from fedsim.records import arrays_from_numpy


def _ctx(*overrides: str) -> ServerContext:
    from fedsim.engine.conf import compose

    return ServerContext(compose(list(overrides)), node_of={0: 10, 1: 11})


def test_the_algorithm_is_found_by_type_through_dp_wrappers() -> None:
    ctx = _ctx("strategy=fedavg")
    fedavg = Strategy(ctx)
    dp = DifferentialPrivacyServerSideFixedClipping(
        fedavg, noise_multiplier=0.1, clipping_norm=1.0, num_sampled_clients=2
    )
    assert algorithm_of(dp, ctx) is fedavg
    assert isinstance(algorithm_of(FedAdam(), ctx), FlowerAlgorithm)


def test_a_hook_name_without_the_contract_is_not_called() -> None:
    class Lookalike(FlowerFedAvg):  # a Flower strategy with fedsim's names, not its contract
        has_global_model = False

        def round_metrics(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
            return {"lookalike/x": 1.0}

    ctx = _ctx("strategy=fedavg")
    algorithm = algorithm_of(Lookalike(), ctx)
    assert isinstance(algorithm, FlowerAlgorithm)
    assert algorithm.has_global_model
    assert algorithm.round_metrics(1, ArrayRecord()) == {}


def test_flower_algorithms_share_the_floating_arrays_that_are_not_local() -> None:
    ctx = _ctx("strategy=fedavg")
    ctx.local_keys = frozenset({"bn.weight"})
    arrays = arrays_from_numpy(
        {
            "w": np.ones(2, np.float32),
            "bn.weight": np.ones(2, np.float32),
            "bn.num_batches_tracked": np.array(3, np.int64),
        }
    )
    assert list(FlowerAlgorithm(ctx).shared(arrays).keys()) == ["w"]
    assert list(Strategy(ctx).shared(arrays).keys()) == ["w", "bn.num_batches_tracked"]
    assert issubclass(Strategy, Algorithm)


def test_flower_state_is_read_from_declared_attributes() -> None:
    adam = FedAdam()
    adam.m_t = {"w": np.array([1.0, 2.0])}
    adam.v_t = {"w": np.array([3.0, 4.0])}
    dp = DifferentialPrivacyServerSideFixedClipping(
        adam, noise_multiplier=0.1, clipping_norm=2.5, num_sampled_clients=2
    )
    state = flower_state(dp)
    assert sorted(state) == ["clipping_norm", "strategy/m_t/w", "strategy/v_t/w"]
    assert state["clipping_norm"] == 2.5
    assert np.array_equal(state["strategy/v_t/w"], [3.0, 4.0])


def test_scaffold_steps_from_the_global_arrays_in_its_context() -> None:
    from fedsim.algorithms.payloads import TrainRes
    from protocols.scaffold import DELTA_RECORD
    from strategies.scaffold import Scaffold

    # Arrange: x = [0, 4]; two clients return y = [2, 4] and [4, 8], dc = [1, 1] and [3, 3]
    ctx = _ctx("strategy=scaffold", "strategy.server_lr=0.5", "scenario.num_clients=4")
    ctx.global_arrays = {"w": np.array([0.0, 4.0], np.float32)}
    scaffold = Scaffold(ctx)

    def reply(y: list[float], dc: list[float]) -> TrainRes:
        delta = arrays_from_numpy({"w": np.array(dc, np.float32)})
        return TrainRes(
            arrays_from_numpy({"w": np.array(y, np.float32)}), 10, {}, {DELTA_RECORD: delta}
        )

    # Act
    out = scaffold.aggregate_arrays([(0, reply([2, 4], [1, 1])), (1, reply([4, 8], [3, 3]))])
    # Assert: x + 0.5 (mean y - x) = [0, 4] + 0.5 [3, 2]; c = (2 / 4) mean dc = 0.5 [2, 2]
    assert np.array_equal(out["w"], [1.5, 5.0])
    assert np.array_equal(scaffold.c["w"], [1.0, 1.0])


@pytest.mark.parametrize("name", ["fedbn", "masha1"])
def test_algorithms_declare_whether_they_hold_a_global_model(name: str) -> None:
    from fedsim.algorithms.registry import get

    assert get(name).server_class().has_global_model is False
    assert get("fedavg").server_class().has_global_model is True


def test_partition_of_is_built_once_and_follows_nodes_rediscovered_in_place() -> None:
    from fedsim.algorithms.strategy import NodeIndex

    node_of = {0: 10, 1: 11, 2: 12}
    index = NodeIndex(node_of)
    assert dict(index) == {10: 0, 11: 1, 12: 2} and index[11] == 1
    node_of[1] = 21  # a SuperNode restarted under a new id (rediscover_nodes updates in place)
    assert index[21] == 1 and index.get(11, -1) == -1 and index.get(99, -1) == -1
    ctx = _ctx()
    assert ctx.partition_of is ctx.partition_of  # one index per run, not one per call
