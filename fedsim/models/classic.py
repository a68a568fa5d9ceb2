"""Classic small federated-learning models, so classic tables run by name.

:mod:`fedsim.models.backbones` registers them (``backbone=cnn_mnist``, ``backbone=cnn_cifar``;
``mlp_2nn`` is :class:`fedsim.models.architectures.MLP` under the paper's name).  Like every
:class:`~fedsim.models.base.Backbone` they split into ``features`` (everything up to the
last hidden layer, post-ReLU) and ``head`` (the output ``nn.Linear``); the softmax of the
papers is the cross-entropy loss's.  Neither has batch norm, so FedBN has nothing to keep
local on them.

``width`` multiplies every channel and hidden size (:func:`fedsim.models.base._scaled`);
the parameter counts quoted below are at ``width = 1`` with 10 classes.  The flatten size is
computed from the input shape, so both build on 28 px and 32 px images, grey or colour.
Initialisation is PyTorch's default, as in NIID-Bench (TensorFlow Federated's Keras
version of the FedAvg CNN starts from Glorot uniform).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.models.base import Backbone, InputShape, _scaled


class CNNMnist(Backbone):
    """The MNIST CNN of FedAvg; embedding = the 512-unit hidden layer (D = 512·width).

    McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient Learning of
    Deep Networks from Decentralized Data", AISTATS 2017, arXiv 1602.05629: two 5×5
    convolutions with 32 and 64 channels, each followed by ReLU and 2×2 max pooling, a
    fully connected layer of 512 units with ReLU and a softmax output.  Convolutions and
    pools use TensorFlow's ``'same'`` padding, as in TensorFlow Federated's
    ``create_original_fedavg_cnn_model`` (pools round up: ``ceil_mode=True``), which gives
    the paper's 1,663,370 parameters on 28×28×1 with 10 classes::

        conv1  1·32·25 + 32          =       832
        conv2  32·64·25 + 64         =    51,264
        fc1    (64·7·7)·512 + 512    = 1,606,144
        head   512·10 + 10           =     5,130

    On 32×32×3 (the digits scenarios) the flatten is 64·8·8 = 4096: 2,156,490 parameters.
    Any ``H, W >= 1`` builds.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``.
    num_classes : int
        Output width of the head.
    width : float, default 1.0
        Multiplier of the channel (32, 64) and hidden (512) sizes.
    """

    def __init__(self, input_shape: InputShape, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        c1, c2, hidden = _scaled(32, width), _scaled(64, width), _scaled(512, width)
        self.conv1 = nn.Conv2d(channels, c1, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5, padding=2)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        pooled_h = math.ceil(math.ceil(height / 2) / 2)
        pooled_w = math.ceil(math.ceil(width_px / 2) / 2)
        self.flatten_dim = c2 * pooled_h * pooled_w
        self.fc1 = nn.Linear(self.flatten_dim, hidden)
        self.feature_dim = hidden
        self.head = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return F.relu(self.fc1(torch.flatten(x, 1)))


_CIFAR_MIN_SIZE = 16  # 16 -> conv 12 -> pool 6 -> conv 2 -> pool 1


def _lenet_size(size: int) -> int:
    """Side after (unpadded 5×5 conv, 2×2 pool) twice: 32 -> 5, 28 -> 4, 16 -> 1."""
    return ((size - 4) // 2 - 4) // 2


class CNNCifar(Backbone):
    """The LeNet-style CIFAR-10 CNN of NIID-Bench; embedding = the 84-unit layer (D = 84·width).

    Li, Diao, Chen, He, "Federated Learning on Non-IID Data Silos: An Experimental Study",
    ICDE 2022, arXiv 2102.02079 (``Xtra-Computing/NIID-Bench model.py`` ``SimpleCNN``, the
    CIFAR model of the FedAvg experiments' PyTorch ports): 5×5 convolutions 3→6 and 6→16
    without padding, each followed by ReLU and 2×2 max pooling, then fully connected
    400→120→84 with ReLU and the 84→10 head.  On 32×32×3 with 10 classes it has 62,006
    parameters::

        conv1  3·6·25 + 6            =    456
        conv2  6·16·25 + 16          =  2,416
        fc1    (16·5·5)·120 + 120    = 48,120
        fc2    120·84 + 84           = 10,164
        head   84·10 + 10            =    850

    On 28×28 the flatten is 16·4·4 = 256, as in NIID-Bench's ``SimpleCNNMNIST``.  Inputs
    below 16×16 leave nothing after the second pool and are refused.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` with ``H, W >= 16``.
    num_classes : int
        Output width of the head.
    width : float, default 1.0
        Multiplier of the channel (6, 16) and hidden (120, 84) sizes.

    Raises
    ------
    ValueError
        If ``H`` or ``W`` is below 16.
    """

    def __init__(self, input_shape: InputShape, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        if min(height, width_px) < _CIFAR_MIN_SIZE:
            raise ValueError(
                f"input {height}×{width_px} is below its {_CIFAR_MIN_SIZE}×{_CIFAR_MIN_SIZE} "
                "minimum (two unpadded 5×5 convolutions and 2×2 pools)"
            )
        c1, c2 = _scaled(6, width), _scaled(16, width)
        h1, h2 = _scaled(120, width), _scaled(84, width)
        self.conv1 = nn.Conv2d(channels, c1, kernel_size=5)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten_dim = c2 * _lenet_size(height) * _lenet_size(width_px)
        self.fc1 = nn.Linear(self.flatten_dim, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.feature_dim = h2
        self.head = nn.Linear(h2, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.relu(self.fc2(x))
