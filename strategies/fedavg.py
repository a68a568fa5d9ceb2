"""FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, arXiv 1602.05629.

Server: sample-size weighted average of every array the clients send (the core
:class:`fedsim.algorithms.strategy.Strategy`).  Client: plain local SGD
(:class:`fedsim.algorithms.client.Client`).
"""

from fedsim.algorithms.strategy import Strategy


class FedAvg(Strategy):
    """Federated averaging; all behaviour is the core base."""
