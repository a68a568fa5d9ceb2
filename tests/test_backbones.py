"""Tests of ``fedsim.models.backbones``: shapes, the features/head split, BN key selection, errors,
the parameter counts of the classic named models, ``torch.func`` compatibility."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from fedsim.config import BackboneConfig
from fedsim.engine.conf import BACKBONE_NAMES
from fedsim.errors import ConfigError
from fedsim.models.backbones import (
    BACKBONES,
    MLP,
    Backbone,
    CNNCifar,
    CNNDigits,
    CNNMnist,
    NormedLinear,
    ResNet18,
    bn_running_stat_keys,
    bn_state_keys,
    build_backbone,
    replace_head,
)

NAMES = sorted(BACKBONES)
SHAPES = [(1, 8, 8), (1, 16, 16), (1, 28, 28), (3, 32, 32)]
NUM_CLASSES = 7
TOO_SMALL = {("cnn_cifar", (1, 8, 8))}  # cnn_cifar needs 16 px (see test_cnn_cifar_refuses...)
NAME_SHAPES = [(n, s) for n in NAMES for s in SHAPES if (n, s) not in TOO_SMALL]


def _build(
    name: str, shape: tuple[int, int, int], width: float = 0.25, classes: int = NUM_CLASSES
) -> Backbone:
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(name=name, width=width), shape, classes)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "shape"), NAME_SHAPES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in NAME_SHAPES]
)
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
    ("name", "dim"),
    [
        ("resnet18", 512),
        ("convnext", 256),
        ("mlp", 200),
        ("logreg", 3 * 32 * 32),
        ("cnn_mnist", 512),
        ("mlp_2nn", 200),
        ("cnn_cifar", 84),
    ],
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


@pytest.mark.parametrize("name", ["convnext", "mlp", "logreg", "cnn_mnist", "mlp_2nn", "cnn_cifar"])
def test_bn_state_keys_empty_without_batchnorm(name: str) -> None:
    assert bn_state_keys(_build(name, (3, 32, 32))) == set()


def test_fedbn_refuses_exactly_the_backbones_without_batch_norm() -> None:
    from protocols.fedbn import NO_BATCH_NORM

    without = {name for name in NAMES if not bn_state_keys(_build(name, (3, 16, 16)))}

    assert set(NO_BATCH_NORM) == without


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


@pytest.mark.parametrize(
    "name", ["cnn_digits", "resnet18", "convnext", "mlp", "cnn_mnist", "cnn_cifar"]
)
def test_width_scales_parameter_count(name: str) -> None:
    small = _n_params(_build(name, (1, 16, 16), width=0.25))
    large = _n_params(_build(name, (1, 16, 16), width=0.5))

    assert large > 2 * small  # most weights are products of two scaled sizes


# The classic models by name at their papers' input, width 1, 10 classes; each count is the
# sum over layers of (fan_in · fan_out + bias), BN layers 2 · channels.
CLASSIC_COUNTS = [
    # McMahan et al. 2017 CNN: conv 1·32·25+32 = 832, conv 32·64·25+64 = 51,264,
    # fc (64·7·7)·512+512 = 1,606,144, out 512·10+10 = 5,130; the paper's 1,663,370
    ("cnn_mnist", (1, 28, 28), CNNMnist, 1_663_370),
    # McMahan et al. 2017 2NN: 784·200+200 = 157,000, 200·200+200 = 40,200, 200·10+10 = 2,010
    ("mlp_2nn", (1, 28, 28), MLP, 199_210),
    # NIID-Bench SimpleCNN: 3·6·25+6 = 456, 6·16·25+16 = 2,416, 400·120+120 = 48,120,
    # 120·84+84 = 10,164, 84·10+10 = 850
    ("cnn_cifar", (3, 32, 32), CNNCifar, 62_006),
    # FedBN DigitModel at FRAug's 32 px: convs 4,864 + 102,464 + 204,928, fc1 8192·2048+2048
    # = 16,779,264, fc2 2048·512+512 = 1,049,088, head 5,130, BN 2·(64+64+128+2048+512) = 5,632
    ("cnn_digits", (3, 32, 32), CNNDigits, 18_151_370),
    # the same on FedBN's 28 px: fc1 6272·2048+2048 = 12,847,104 instead of 16,779,264
    ("cnn_digits", (3, 28, 28), CNNDigits, 14_219_210),
    # ResNet-18, CIFAR stem: kuangliu/pytorch-cifar's ResNet18 count with 10 classes
    ("resnet18", (3, 32, 32), ResNet18, 11_173_962),
]


@pytest.mark.parametrize(("name", "shape", "cls", "count"), CLASSIC_COUNTS)
def test_classic_model_by_name_has_the_papers_parameter_count(
    name: str, shape: tuple[int, int, int], cls: type[Backbone], count: int
) -> None:
    model = _build(name, shape, width=1.0, classes=10).eval()

    with torch.no_grad():
        logits = model(torch.randn(3, *shape))

    assert type(model) is cls
    assert _n_params(model) == count
    assert logits.shape == (3, 10)


def test_cnn_mnist_pools_round_up_like_tensorflow_same_padding() -> None:
    # 15 -> 8 -> 4 with 'same' pooling (7 -> 3 if the pools rounded down)
    model = _build("cnn_mnist", (1, 15, 15), width=1.0, classes=10)
    assert isinstance(model, CNNMnist)

    assert model.flatten_dim == 64 * 4 * 4
    assert model(torch.randn(2, 1, 15, 15)).shape == (2, 10)
    assert _build("cnn_mnist", (3, 32, 32), width=1.0).fc1.in_features == 64 * 8 * 8


def test_cnn_cifar_flatten_adapts_to_28px_as_niid_bench_mnist_model() -> None:
    model = _build("cnn_cifar", (1, 28, 28), width=1.0, classes=10)
    assert isinstance(model, CNNCifar)

    assert model.fc1.in_features == 16 * 4 * 4  # 28 -> 24 -> 12 -> 8 -> 4
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_cnn_cifar_refuses_inputs_below_16px_with_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        _build("cnn_cifar", (1, 15, 16))

    assert str(info.value) == (
        "backbone cnn_cifar: input 15×16 is below its 16×16 minimum"
        " (two unpadded 5×5 convolutions and 2×2 pools)"
    )
    assert _build("cnn_cifar", (1, 16, 16)).fc1.in_features == 4  # 16·0.25 channels × 1 × 1


@pytest.mark.parametrize("name", NAMES)
def test_functional_call_under_vmap_matches_each_model(name: str) -> None:
    # Arrange: two differently initialised copies, stacked as the vectorised trainer does
    shape = (3, 16, 16)
    models = [_build(name, shape).eval()]
    torch.manual_seed(1)
    models.append(build_backbone(BackboneConfig(name=name, width=0.25), shape, NUM_CLASSES).eval())
    params, buffers = stack_module_state(models)
    x = torch.randn(2, 5, *shape)

    # Act
    def forward(
        p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor = functional_call(models[0], (p, b), (xb,))
        return out

    with torch.no_grad():
        stacked = vmap(forward)(params, buffers, x)
        each = torch.stack([m(xi) for m, xi in zip(models, x, strict=True)])

    # Assert
    assert stacked.shape == (2, 5, NUM_CLASSES)
    assert not torch.allclose(each[0], each[1])
    torch.testing.assert_close(stacked, each)


def test_mlp_parameter_count_by_hand() -> None:
    model = _build("mlp", (1, 8, 8), width=0.5, classes=10)

    assert _n_params(model) == (64 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)


def test_unknown_name_raises_config_error_listing_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        build_backbone(BackboneConfig(name="foo"), (3, 32, 32), 10)

    assert str(info.value) == (
        "backbone.name: unknown 'foo' (allowed: cnn_cifar, cnn_digits, cnn_mnist, convnext,"
        " logreg, mlp, mlp_2nn, resnet18)"
    )


def test_hydra_group_names_are_the_registry_names() -> None:
    assert sorted(BACKBONE_NAMES) == NAMES


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
    # cnn_cifar at width 0.25 squeezes a 16 px image through 4 channels × 1 × 1; at width 1
    # it is still small (16 channels, 120 and 84 units)
    width = 1.0 if name == "cnn_cifar" else 0.25
    model = _build(name, (1, 16, 16), width=width, classes=4).train()
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
