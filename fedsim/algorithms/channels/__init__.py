"""Compression channels: encode on the sender, measure in transit, decode on the receiver.

A :class:`Channel` (a compressor) turns a mapping of named arrays into the
:class:`~flwr.app.ArrayRecord` that really travels, and back.  Channels are found by name
in a registry filled from Python entry points (group ``fedsim.channels``,
:func:`channel_classes`): fedsim's ``pyproject.toml`` publishes the codecs below, and an
installed package adds its own, ``channel.up=<its name>``, without editing fedsim
(README, "Writing your own compressor").  Validation and the allowed names come from the
registry.

A :class:`Link` is one direction of the connection (``channel.up`` or ``channel.down``):
its channel, its seed streams, the records that never pass through it, byte accounting,
and the two stages, :meth:`Link.send` on the sender and :meth:`Link.receive` on the
receiver.  The server wrapper (:mod:`fedsim.algorithms.wrap.server`), the client mod
(:mod:`fedsim.algorithms.wrap.client`) and an algorithm that is itself a compression method (MASHA)
all take the run's pair from :func:`build_links`, built once per run and side, so both ends
encode and decode through the same code
(FLSim's channels: sender stage, size accounting and receiver stage in one class;
``shared/STYLE.md`` §5).  Strategies never know which codec is in use, and the round loop
measures what crossed the Grid with :func:`wire_nbytes`.

Codecs (every one works array by array, on the flattened array; non-floating arrays,
e.g. BatchNorm's ``num_batches_tracked``, always travel unchanged):

``identity``
    The arrays as they are (byte-identical to a message without a channel).
``randk``
    RandK (unbiased): ``k = ceil(ratio * d)`` coordinates drawn uniformly without
    replacement, scaled by ``d / k`` on the receiver, so ``E[Q(v)] = v`` and
    ``E||Q(v)||^2 = (d/k) ||v||^2``.  The mask is drawn from a fresh 64-bit seed per call
    (the caller passes a generator derived from ``(seed, round, client)``); the seed, not
    the indices, is sent.
``topk``
    TopK (contractive, biased): the ``k`` largest-magnitude coordinates, unscaled;
    ``||C(v) - v||^2 <= (1 - k/d) ||v||^2`` (``delta = d/k``).  Values and indices are sent.
``qsgd``
    QSGD (Alistarh et al., NeurIPS 2017, arXiv 1610.02132) with ``s = levels`` levels per
    bucket of :data:`QSGD_BUCKET` coordinates: ``Q(v_i) = ||v_b|| sign(v_i) xi_i / s`` with
    ``xi_i`` the stochastic rounding of ``s |v_i| / ||v_b||`` (unbiased).  Sent: one float32
    norm per bucket and one signed int8 level per coordinate (so ``levels <= 127``; no
    Elias coding, unlike the paper).
``sparse``
    Lossless: the non-zero values and their indices when that is smaller than the dense
    array, else the dense array.  Useful for a server that forwards an average of sparse
    vectors uncompressed ("unidirectional" compression).

Byte convention (:func:`payload_nbytes`): the bytes of the array *data* that is sent —
4 per float32 value, 4 per int32 index, 8 per seed, 1 per int8 level.  The per-array
framing that Flower adds on the wire (the ``.npy`` header, dtype, shape and record keys,
about 128 bytes per array) and the config/metric scalars are not counted: they do not
depend on the codec and would swamp the payload of small problems.
"""

from __future__ import annotations

from fedsim.algorithms.channels.codecs import (
    QSGD_BUCKET,
    SEP,
    SHAPE,
    Arrays,
    References,
    num_kept,
    payload_nbytes,
    qsgd_decode,
    qsgd_encode,
    randk,
    randk_indices,
    topk,
    topk_indices,
    wire_nbytes,
)
from fedsim.algorithms.channels.compressors import (
    Channel,
    IdentityChannel,
    QSGDChannel,
    RandKChannel,
    SparseChannel,
    TopKChannel,
    channel_classes,
    make_channel,
    validate_channel,
)
from fedsim.algorithms.channels.link import Link, Links, build_links, clear_registry

__all__ = [
    "QSGD_BUCKET",
    "SEP",
    "SHAPE",
    "Arrays",
    "Channel",
    "IdentityChannel",
    "Link",
    "Links",
    "QSGDChannel",
    "RandKChannel",
    "References",
    "SparseChannel",
    "TopKChannel",
    "build_links",
    "channel_classes",
    "clear_registry",
    "make_channel",
    "num_kept",
    "payload_nbytes",
    "qsgd_decode",
    "qsgd_encode",
    "randk",
    "randk_indices",
    "topk",
    "topk_indices",
    "validate_channel",
    "wire_nbytes",
]
