"""FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, arXiv 1602.05629.

Server: sample-size weighted average of every array the clients send.  Client: plain
local SGD (``clients.base.Client``).  Nothing stays on the client.
"""

from strategies.base import FedsimStrategy


class FedAvg(FedsimStrategy):
    """Federated averaging; all behaviour is the shared base."""
