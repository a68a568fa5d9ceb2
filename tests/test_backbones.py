"""Tests of ``fedsim.backbones``: shapes, the features/head split, BN key selection, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.backbones import (
    BACKBONES,
    Backbone,
    CNNDigits,
    NormedLinear,
    bn_running_stat_keys,
    bn_state_keys,
    build_backbone,
    replace_head,
)
from fedsim.config import BackboneConfig
from fedsim.errors import ConfigError

NAMES = sorted(BACKBONES)
SHAPES = [(1, 8, 8), (1, 16, 16), (1, 28, 28), (3, 32, 32)]
NUM_CLASSES = 7


def _build(
    name: str, shape: tuple[int, int, int], width: float = 0.25, classes: int = NUM_CLASSES
) -> Backbone:
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(name=name, width=width), shape, classes)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_and_features_head_split(name: str, shape: tuple[int, int, int]) -> None:
    # Arrange
    model = _build(name, shape).eval()
    x = torch.randn(4, *shape)

    # Act
    with torch.no_grad():
        emb = model.features(x)
        logits = model(x)

    # Assert
    assert emb.shape == (4, model.feature_dim)
    assert logits.shape == (4, NUM_CLASSES)
    assert torch.equal(model.head(emb), logits)
    assert isinstance(model.head, nn.Linear)
    assert model.head.in_features == model.feature_dim


def test_cnn_digits_matches_the_fraug_sizes_at_width_one() -> None:
    model = _build("cnn_digits", (3, 32, 32), width=1.0, classes=10)
    assert isinstance(model, CNNDigits)

    assert model.fc1.in_features == 8192  # 128 channels × 8 × 8
    assert model.feature_dim == 512
    assert model.features(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_cnn_digits_flatten_on_fedbn_28px_input_is_6272() -> None:
    model = _build("cnn_digits", (1, 28, 28), width=1.0)
    assert isinstance(model, CNNDigits)

    assert model.fc1.in_features == 6272  # 128 × 7 × 7, FedBN's DigitModel


@pytest.mark.parametrize(
    ("name", "dim"), [("resnet18", 512), ("convnext", 256), ("mlp", 200), ("logreg", 3 * 32 * 32)]
)
def test_feature_dim_at_width_one(name: str, dim: int) -> None:
    assert _build(name, (3, 32, 32), width=1.0).feature_dim == dim


def test_bn_state_keys_of_cnn_digits_are_its_25_bn_tensors() -> None:
    model = _build("cnn_digits", (3, 32, 32))
    stats = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = {f"bn{i}.{k}" for i in range(1, 6) for k in stats}

    keys = bn_state_keys(model)

    assert keys == expected
    assert len(keys) == 25
    assert keys <= set(model.state_dict())


def test_bn_running_stat_keys_of_cnn_digits_are_15() -> None:
    keys = bn_running_stat_keys(_build("cnn_digits", (3, 32, 32)))

    assert len(keys) == 15
    assert "bn1.running_mean" in keys
    assert "bn1.weight" not in keys


def test_bn_state_keys_of_resnet18_are_exactly_the_batchnorm_tensors() -> None:
    model = _build("resnet18", (3, 32, 32))
    # stem BN + 8 blocks × 2 BN + 3 projection shortcuts (layer2..4) = 20 BN layers
    bn_names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]

    keys = bn_state_keys(model)

    assert len(bn_names) == 20
    assert len(keys) == 20 * 5
    assert "layer2.0.downsample.1.running_var" in keys
    assert not any("conv" in k or k.startswith("head") for k in keys)
    assert {k for k in model.state_dict() if k.rsplit(".", 1)[0] in bn_names} == keys


@pytest.mark.parametrize("name", ["convnext", "mlp", "logreg"])
def test_bn_state_keys_empty_without_batchnorm(name: str) -> None:
    assert bn_state_keys(_build(name, (3, 32, 32))) == set()


def test_bn_state_keys_select_by_type_not_by_name() -> None:
    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn_fake = nn.Linear(3, 3)
            self.norm = nn.BatchNorm1d(3, affine=False)

    keys = bn_state_keys(Toy())

    assert keys == {"norm.running_mean", "norm.running_var", "norm.num_batches_tracked"}
    assert bn_running_stat_keys(Toy()) == keys


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_logreg_has_dhw_times_k_plus_k_parameters(shape: tuple[int, int, int]) -> None:
    model = _build("logreg", shape, width=1.0, classes=10)

    assert _n_params(model) == math.prod(shape) * 10 + 10


@pytest.mark.parametrize("name", ["cnn_digits", "resnet18", "convnext", "mlp"])
def test_width_scales_parameter_count(name: str) -> None:
    small = _n_params(_build(name, (1, 16, 16), width=0.25))
    large = _n_params(_build(name, (1, 16, 16), width=0.5))

    assert large > 2 * small  # most weights are products of two scaled sizes


def test_mlp_parameter_count_by_hand() -> None:
    model = _build("mlp", (1, 8, 8), width=0.5, classes=10)

    assert _n_params(model) == (64 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)


def test_unknown_name_raises_config_error_listing_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        build_backbone(BackboneConfig(name="foo"), (3, 32, 32), 10)

    assert str(info.value) == (
        "backbone.name: unknown 'foo' (allowed: cnn_digits, convnext, logreg, mlp, resnet18)"
    )


@pytest.mark.parametrize("width", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_width_raises_config_error(width: float) -> None:
    with pytest.raises(ConfigError, match=r"^backbone\.width: invalid"):
        build_backbone(BackboneConfig(name="mlp", width=width), (1, 8, 8), 10)


@pytest.mark.parametrize(("shape", "classes"), [((1, 0, 8), 10), ((8, 8), 10), ((1, 8, 8), 0)])
def test_invalid_shape_or_classes_raise_config_error(shape: tuple, classes: int) -> None:
    with pytest.raises(ConfigError):
        build_backbone(BackboneConfig(name="mlp"), shape, classes)


def test_same_seed_same_initialisation() -> None:
    a = _build("resnet18", (3, 16, 16)).state_dict()
    b = _build("resnet18", (3, 16, 16)).state_dict()
    torch.manual_seed(1)
    c = build_backbone(BackboneConfig(name="resnet18", width=0.25), (3, 16, 16), NUM_CLASSES)

    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c.state_dict()["conv1.weight"])


def test_channels_last_is_applied_to_conv_weights() -> None:
    cfg = BackboneConfig(name="cnn_digits", width=0.25, channels_last=True)
    model = build_backbone(cfg, (3, 16, 16), 10)
    x = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)

    assert isinstance(model, CNNDigits)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.conv1.weight.is_contiguous()
    assert model(x).shape == (2, 10)


def test_normed_linear_is_bounded_by_scale_and_reaches_it_on_a_prototype() -> None:
    torch.manual_seed(0)
    head = NormedLinear(16, 5, scale=10.0)
    x = 100 * torch.randn(64, 16)

    logits = head(x)
    aligned = head(3 * head.weight[2:3].detach())

    assert logits.shape == (64, 5)
    assert logits.abs().max() <= 10.0 + 1e-5
    assert aligned[0, 2].item() == pytest.approx(10.0, abs=1e-4)
    assert aligned.abs().max() <= 10.0 + 1e-5


def test_replace_head_installs_normed_linear_and_checks_width() -> None:
    model = _build("resnet18", (3, 16, 16))

    replace_head(model, NormedLinear(model.feature_dim, 10))
    logits = model(torch.randn(2, 3, 16, 16))

    assert isinstance(model.head, NormedLinear)
    assert logits.shape == (2, 10)
    assert logits.abs().max() <= 10.0 + 1e-5
    with pytest.raises(ValueError, match="input features"):
        replace_head(model, nn.Linear(model.feature_dim + 1, 10))


@pytest.mark.parametrize("name", NAMES)
def test_training_steps_reduce_loss_on_a_fixed_batch(name: str) -> None:
    # Arrange
    model = _build(name, (1, 16, 16), width=0.25, classes=4).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 16, 16, generator=gen)
    y = torch.arange(16) % 4
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    # Act
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = F.cross_entropy(model(x), y).item()

    # Assert
    assert final < 0.5 * losses[0]


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_cuda_forward_under_bf16_autocast(name: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cfg = BackboneConfig(name=name, width=0.25, channels_last=True)
    torch.manual_seed(0)
    model = build_backbone(cfg, (3, 32, 32), 10).cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)

    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
        loss = F.cross_entropy(logits, torch.arange(8, device="cuda") % 10)
    loss.backward()

    assert logits.shape == (8, 10)
    assert logits.device.type == "cuda"
    assert torch.isfinite(logits.float()).all()
    assert all(p.grad is not None for p in model.parameters())
