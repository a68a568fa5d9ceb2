"""The backbone contract and the heads: what every model in this package shares.

:class:`Backbone` is the ``features`` / ``head`` split the algorithms rely on (FRAug augments
and classifies embeddings, FedoSSL swaps the head and clusters the embeddings);
:class:`NormedLinear` is FedoSSL's cosine head and :func:`replace_head` installs a head on a
built model.  They are apart from the models (:mod:`fedsim.models.architectures`,
:mod:`fedsim.models.classic`) because every model and every head depends on them and on
nothing else: a new model imports this module, not its siblings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

InputShape = tuple[int, int, int]


def _scaled(size: int, width: float) -> int:
    """Return ``size * width`` rounded to the nearest integer, at least 1."""
    return max(1, round(size * width))


class Backbone(nn.Module):
    """A classifier split into an embedding network and a head.

    Subclasses set ``feature_dim`` and ``head`` in ``__init__`` and implement
    :meth:`features`.

    Attributes
    ----------
    feature_dim : int
        ``D``, the width of the embedding returned by :meth:`features`.
    head : nn.Module
        Maps ``N×D`` embeddings to ``N×num_classes`` logits (``nn.Linear`` unless replaced
        with :func:`replace_head`).
    """

    feature_dim: int
    head: nn.Module

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``N×D`` embedding of the image batch ``x`` (``N×C×H×W``)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``N×num_classes`` logits ``head(features(x))``."""
        out: torch.Tensor = self.head(self.features(x))
        return out


class NormedLinear(nn.Module):
    """Cosine classifier: ``logits[n, c] = scale · cos(f_n, W_c)``.

    The head of ORCA (Cao et al., ICLR 2022, arXiv 2102.03526) used by FedoSSL (Zhang et
    al., ICML 2023, arXiv 2305.00771) with ``scale = 10``.  Logits lie in ``[-scale, scale]``.
    Unlike ORCA's code, which stores the weight as ``in×out``, the weight is ``out×in`` like
    ``nn.Linear``, so ``weight[c]`` is the prototype of class ``c``.  Initialisation follows
    ORCA: uniform in ``[-1, 1]``, every class row rescaled to unit norm.

    Parameters
    ----------
    in_features : int
        Embedding width ``D``.
    out_features : int
        Number of classes.
    scale : float, default 10.0
        Inverse temperature multiplying the cosine similarities.
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 10.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw rows uniformly in ``[-1, 1]`` and normalise each to unit length."""
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``scale · normalize(x) @ normalize(W)ᵀ``."""
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"
        )


def replace_head(model: Backbone, new_head: nn.Module) -> Backbone:
    """Install ``new_head`` as ``model.head`` and return ``model``.

    The new head is moved to the device (and floating dtype) of the model's parameters.  If
    the head declares ``in_features`` it must equal ``model.feature_dim``.

    Parameters
    ----------
    model : Backbone
        The backbone to modify in place.
    new_head : nn.Module
        E.g. ``NormedLinear(model.feature_dim, num_classes)`` for FedoSSL.

    Returns
    -------
    Backbone
        ``model`` itself, for chaining.

    Raises
    ------
    ValueError
        If ``new_head.in_features`` differs from ``model.feature_dim``.
    """
    in_features = getattr(new_head, "in_features", model.feature_dim)
    if in_features != model.feature_dim:
        raise ValueError(
            f"head expects {in_features} input features, backbone gives {model.feature_dim}"
        )
    reference = next(model.parameters(), None)
    if reference is not None:
        new_head = new_head.to(device=reference.device, dtype=reference.dtype)
    model.head = new_head
    return model
