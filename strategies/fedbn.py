"""FedBN: Li et al., "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization", ICLR 2021, arXiv 2102.07623.

Server: FedAvg over every array *except* batch-norm layers, which it never sends nor
receives.  Client (``clients.fedbn``): keeps all batch-norm tensors (affine weights and
running statistics, chosen by module type) in its persistent state across rounds.  Both
halves apply one rule, :func:`protocols.fedbn.local_keys` (the server through the client
class, ``ServerContext.local_keys``).
Because the aggregated arrays lack the BN layers, there is no single global model to
evaluate centrally; evaluation is per client with its own BN layers.
"""

from fedsim.algorithms.strategy import Strategy


class FedBN(Strategy):
    """FedAvg whose clients keep their batch-norm layers."""

    has_global_model = False
