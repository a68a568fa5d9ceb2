"""The vision backbones: every model class, with a ``features`` / ``head`` split.

:mod:`fedsim.models.backbones` selects them by name (and re-exports every class); the
contract they share and the heads are in :mod:`fedsim.models.base`.

Every backbone is a :class:`~fedsim.models.base.Backbone`: ``features(x)`` maps an image
batch ``N×C×H×W`` to an embedding ``N×D`` (``D = feature_dim``), ``head`` maps the embedding
to ``N×num_classes`` logits and ``forward(x) = head(features(x))``.  The split is what the
algorithms need: FRAug augments and classifies embeddings (``e = g(x)``, ``h`` the last
linear layer), FedoSSL swaps the head for a cosine classifier
(:class:`~fedsim.models.base.NormedLinear`) and clusters the embeddings.
FedBN keeps batch-norm tensors local; :func:`fedsim.models.backbones.bn_state_keys` finds them.

Models (all built for an explicit input shape, so flatten sizes are computed at construction):

``cnn_digits``
    The Digits CNN of FedBN (Li et al., "FedBN: Federated Learning on Non-IID Features via
    Local Batch Normalization", ICLR 2021, arXiv 2102.07623; ``med-air/FedBN nets/models.py``
    ``DigitModel``) in the form used by FRAug (Chen et al., ICCV 2023, arXiv 2205.14900;
    ``CNN_Digits``).  Deviation from FedBN's code: pooling is ``MaxPool2d(3, 2, 1)`` as in
    FRAug instead of FedBN's ``max_pool2d(x, 2)``; both give the same sizes on even inputs
    (28 -> 14 -> 7, 32 -> 16 -> 8), so the 6272 / 8192 flatten widths are the papers'.
    Otherwise the layers are FedBN's at width 1: 14,219,210 parameters on FedBN's 28×28×3
    and 18,151,370 on FRAug's 32×32×3, with 10 classes.
``resnet18``
    ResNet-18 (He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition",
    CVPR 2016, arXiv 1512.03385) with the CIFAR stem used by ORCA / FedoSSL
    (3×3 stride-1 stem convolution, no max-pool).  Stages are named ``layer1`` ... ``layer4``
    as in torchvision, because FedoSSL freezes everything but ``layer4`` and the head.
    11,173,962 parameters at width 1 with 10 classes, as ``kuangliu/pytorch-cifar``'s.
``convnext``
    A small ConvNeXt (Liu, Mao, Wu, Feichtenhofer, Darrell, Xie, "A ConvNet for the 2020s",
    CVPR 2022, arXiv 2201.03545): patchify stem, four stages of depth 2 and widths
    32/64/128/256, inverted-bottleneck blocks with layer scale, LayerNorm only (no
    BatchNorm, so FedBN has nothing to keep local).  Deviations from the paper, for small
    images: the stem is 2×2/stride 2 (1×1/stride 1 below 16 px) instead of 4×4/stride 4, a
    stage whose input is already 1 px wide is not downsampled (its LayerNorm + convolution
    becomes 1×1 / stride 1 so that the channel count still changes), no stochastic depth.
``mlp``
    Two hidden ReLU layers of 200 units: the 2NN of McMahan et al. (arXiv 1602.05629), also
    registered as ``mlp_2nn``; 199,210 parameters on 28×28×1 with 10 classes.
``logreg``
    Multinomial logistic regression (FLUTE benchmark, Dimitriadis et al., arXiv
    2203.13789): ``features`` is the flattened image, ``head`` is ``Linear(C·H·W, K)``.
    ``width`` has no meaning for it and is ignored.

The classic small FL CNNs (``cnn_mnist``, ``cnn_cifar``) are in :mod:`fedsim.models.classic`.

``width`` multiplies every channel and hidden size (rounded, at least 1).  Initialisation uses
the torch global generator only through ``torch.nn.init``: the caller seeds it with
``torch.manual_seed``; nothing in this module seeds anything.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.models.base import Backbone, InputShape, _scaled

# --------------------------------------------------------------------------- cnn_digits


def _pool_size(size: int) -> int:
    """Output size of ``MaxPool2d(kernel_size=3, stride=2, padding=1)``."""
    return (size + 2 * 1 - 3) // 2 + 1


class CNNDigits(Backbone):
    """The FedBN / FRAug Digits CNN; embedding = output of the second FC block (post-ReLU).

    Layer names (``conv1``, ``bn1``, ..., ``fc2``, ``bn5``) follow FedBN's ``DigitModel``;
    ``fc3`` is ``head``.

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``.
    num_classes : int
        Output width of the head.
    width : float, default 1.0
        Multiplier of the channel (64, 64, 128) and hidden (2048, 512) sizes.
    """

    def __init__(self, input_shape: InputShape, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        c1, c2, c3 = _scaled(64, width), _scaled(64, width), _scaled(128, width)
        h1, h2 = _scaled(2048, width), _scaled(512, width)
        self.conv1 = nn.Conv2d(channels, c1, kernel_size=5, stride=1, padding=2)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5, stride=1, padding=2)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=5, stride=1, padding=2)
        self.bn3 = nn.BatchNorm2d(c3)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.flatten_dim = c3 * _pool_size(_pool_size(height)) * _pool_size(_pool_size(width_px))
        self.fc1 = nn.Linear(self.flatten_dim, h1)
        self.bn4 = nn.BatchNorm1d(h1)
        self.fc2 = nn.Linear(h1, h2)
        self.bn5 = nn.BatchNorm1d(h2)
        self.feature_dim = h2
        self.head = nn.Linear(h2, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = F.relu(self.bn3(self.conv3(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.bn4(self.fc1(x)))
        return F.relu(self.bn5(self.fc2(x)))


# --------------------------------------------------------------------------- resnet18


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


class ResNet18(Backbone):
    """ResNet-18 with a CIFAR stem; embedding = global average pool of ``layer4`` (D = 512·width).

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``; any ``H, W >= 1`` works (stages 2-4 halve the size, rounding up).
    num_classes : int
        Output width of the head.
    width : float, default 1.0
        Multiplier of the stage widths 64, 128, 256, 512.

    Notes
    -----
    Convolutions use Kaiming-normal (fan-out) initialisation and BN starts at weight 1,
    bias 0, as in torchvision.
    """

    def __init__(self, input_shape: InputShape, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        planes = [_scaled(p, width) for p in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(input_shape[0], planes[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.layer1 = self._stage(planes[0], planes[0], stride=1)
        self.layer2 = self._stage(planes[0], planes[1], stride=2)
        self.layer3 = self._stage(planes[1], planes[2], stride=2)
        self.layer4 = self._stage(planes[2], planes[3], stride=2)
        self.feature_dim = planes[3]
        self.head = nn.Linear(planes[3], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


# --------------------------------------------------------------------------- convnext


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an ``N×C×H×W`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dwconv 7×7 → LayerNorm → Linear 4× → GELU → Linear → layer scale → residual."""

    def __init__(self, dim: int, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # N×H×W×C: LayerNorm and Linear act on C
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(Backbone):
    """A small ConvNeXt; embedding = LayerNorm of the global average pool (D = 256·width).

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``.  Below 16 px the stem is 1×1/stride 1, else 2×2/stride 2.
    num_classes : int
        Output width of the head.
    width : float, default 1.0
        Multiplier of the stage widths 32, 64, 128, 256.
    depths : tuple of int, default (2, 2, 2, 2)
        Blocks per stage.

    Notes
    -----
    Conv and Linear weights use truncated-normal (std 0.02) initialisation and zero bias, as
    in the official code.  The embedding is not non-negative (it is a LayerNorm output).
    """

    def __init__(
        self,
        input_shape: InputShape,
        num_classes: int,
        width: float = 1.0,
        depths: tuple[int, ...] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        dims = [_scaled(d, width) for d in (32, 64, 128, 256)]
        patch = 1 if min(height, width_px) < 16 else 2
        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(channels, dims[0], kernel_size=patch, stride=patch),
                    LayerNorm2d(dims[0], eps=1e-6),
                )
            ]
        )
        size = min(height // patch, width_px // patch)
        for i in range(1, len(dims)):
            step = 2 if size >= 2 else 1  # never shrink below 1 px
            size //= step
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm2d(dims[i - 1], eps=1e-6),
                    nn.Conv2d(dims[i - 1], dims[i], kernel_size=step, stride=step),
                )
            )
        self.stages = nn.ModuleList(
            [
                nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(depth)])
                for dim, depth in zip(dims, depths, strict=True)
            ]
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.feature_dim = dims[-1]
        self.head = nn.Linear(dims[-1], num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
        return self.norm(x.mean(dim=(-2, -1)))


# --------------------------------------------------------------------------- mlp, logreg


class MLP(Backbone):
    """flatten → Linear 200 → ReLU → Linear 200 → ReLU (D = 200·width).

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``.
    num_classes : int
        Output width of the head.
    width : float, default 1.0
        Multiplier of the hidden size 200.
    """

    def __init__(self, input_shape: InputShape, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        hidden = _scaled(200, width)
        self.fc1 = nn.Linear(math.prod(input_shape), hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.feature_dim = hidden
        self.head = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.relu(self.fc2(x))


class LogReg(Backbone):
    """Multinomial logistic regression: ``features`` = flatten, ``head`` = Linear(C·H·W, K).

    Parameters
    ----------
    input_shape : tuple of int
        ``(C, H, W)``.
    num_classes : int
        Number of classes ``K``.
    width : float, default 1.0
        Ignored (there is no hidden layer); accepted so every backbone has one signature.
    """

    def __init__(self, input_shape: InputShape, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        del width
        self.feature_dim = math.prod(input_shape)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)
