"""FedProx: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
arXiv 1812.06127.

Server: FedAvg aggregation; it sends the proximal coefficient ``mu`` with the arrays.
Client (``clients.fedprox``): adds ``(mu / 2) * ||w - w_global||^2`` to its local loss —
Flower's own FedProx only forwards ``mu``, the term itself lives on the client.
"""

from fedsim.algorithms.payloads import Scalar
from fedsim.algorithms.strategy import Strategy
from protocols.fedprox import MU_KEY, FedProxConfig


class FedProx(Strategy):
    """FedAvg that tells its clients to use a proximal term."""

    def train_config(self, server_round: int) -> dict[str, Scalar]:
        cfg = self.ctx.cfg.strategy
        assert isinstance(cfg, FedProxConfig)
        return {MU_KEY: float(cfg.mu)}
