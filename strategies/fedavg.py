"""FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, arXiv 1602.05629.

Server: sample-size weighted average of every array the clients send (the core
:class:`fedsim.strategy.Strategy`).  Client: plain local SGD (:class:`fedsim.client.Client`).
"""

from fedsim.strategy import Strategy


class FedAvg(Strategy):
    """Federated averaging; all behaviour is the core base."""
