"""Tests of fedsim.data.shift: per-client feature shifts on small hand-checkable images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.config import ShiftConfig
from fedsim.data.shift import (
    SHIFT_KINDS,
    apply_shift,
    apply_shift_normalized,
    gaussian_blur,
    is_shifted,
    rotate,
    shift_angle,
    shift_rng,
    validate_shift,
)
from fedsim.errors import ConfigError


def ramp(n: int = 2, channels: int = 3, size: int = 5) -> torch.Tensor:
    """Distinct values in [0, 1], so any misplaced pixel shows."""
    count = n * channels * size * size
    return (torch.arange(count, dtype=torch.float32) / count).view(n, channels, size, size)


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- rotation


def test_rotation_by_90_equals_rot90_on_a_square_image() -> None:
    x = ramp()
    cfg = ShiftConfig(kind="rotation", angle=90.0)

    out = apply_shift(x, 0, cfg, rng())

    assert torch.allclose(out, torch.rot90(x, 1, dims=(2, 3)), atol=1e-6)


def test_rotation_positive_angle_is_counter_clockwise() -> None:
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 2] = 1.0  # top-right corner

    out = rotate(x, 90.0)

    assert out[0, 0, 0, 0].item() == pytest.approx(1.0)  # moved to the top-left corner
    assert out.sum().item() == pytest.approx(1.0)


def test_rotation_fills_corners_with_zero() -> None:
    x = torch.ones(1, 1, 8, 8)

    out = rotate(x, 45.0)

    assert out[0, 0, 0, 0].item() == 0.0
    assert out[0, 0, 4, 4].item() == pytest.approx(1.0)


def test_rotation_gives_every_client_the_same_angle() -> None:
    x = ramp()
    cfg = ShiftConfig(kind="rotation", angle=30.0)

    first = apply_shift(x, 0, cfg, rng())
    fifth = apply_shift(x, 5, cfg, rng())

    assert torch.equal(first, fifth)
    assert not torch.equal(first, x)


def test_rotated_family_rotates_client_i_by_i_times_delta() -> None:
    x = ramp()
    cfg = ShiftConfig(kind="rotated_family", delta=30.0)

    client0 = apply_shift(x, 0, cfg, rng())
    client3 = apply_shift(x, 3, cfg, rng())

    assert [shift_angle(i, cfg) for i in range(4)] == [0.0, 30.0, 60.0, 90.0]
    assert torch.allclose(client0, x)
    assert torch.allclose(client3, torch.rot90(x, 1, dims=(2, 3)), atol=1e-6)


# --------------------------------------------------------------------------- pixel maps


def test_invert_maps_values_and_twice_is_identity() -> None:
    x = ramp()
    cfg = ShiftConfig(kind="invert")

    once = apply_shift(x, 0, cfg, rng())
    twice = apply_shift(once, 0, cfg, rng())

    assert torch.allclose(once, 1.0 - x)
    assert torch.allclose(twice, x)


def test_permute_channels_is_a_deterministic_permutation() -> None:
    x = ramp(channels=3)
    cfg = ShiftConfig(kind="permute_channels")

    out = apply_shift(x, 4, cfg, rng())
    again = apply_shift(x, 4, cfg, rng())

    order = [next(c for c in range(3) if torch.equal(out[:, k], x[:, c])) for k in range(3)]
    assert sorted(order) == [0, 1, 2]
    assert torch.equal(out, again)


def test_permute_channels_leaves_grey_images_alone() -> None:
    x = ramp(channels=1)

    out = apply_shift(x, 2, ShiftConfig(kind="permute_channels"), rng())

    assert torch.equal(out, x)


def test_contrast_and_brightness_follow_the_formula() -> None:
    x = torch.tensor([0.2, 0.4, 0.6, 0.4]).view(1, 1, 2, 2)  # image mean 0.4
    cfg = ShiftConfig(kind="contrast", contrast=[2.0, 2.0], brightness=[0.1, 0.1])

    out = apply_shift(x, 0, cfg, rng())

    # (x - 0.4) * 2 + 0.4 + 0.1
    assert out.flatten().tolist() == pytest.approx([0.1, 0.5, 0.9, 0.5])


def test_contrast_is_drawn_per_client() -> None:
    x = ramp()
    cfg = ShiftConfig(kind="contrast")

    assert not torch.equal(apply_shift(x, 0, cfg, rng()), apply_shift(x, 1, cfg, rng()))


# --------------------------------------------------------------------------- noise and blur


def test_noise_is_deterministic_for_the_same_rng_seed() -> None:
    x = torch.full((4, 1, 8, 8), 0.5)
    cfg = ShiftConfig(kind="noise", noise_std=0.1)

    first = apply_shift(x, 1, cfg, np.random.default_rng(42))
    again = apply_shift(x, 1, cfg, np.random.default_rng(42))
    other_seed = apply_shift(x, 1, cfg, np.random.default_rng(43))

    assert torch.equal(first, again)
    assert not torch.equal(first, other_seed)
    assert (first - x).std().item() == pytest.approx(0.1, rel=0.15)


def test_noise_differs_per_client_even_with_the_same_generator_seed() -> None:
    x = torch.full((2, 1, 8, 8), 0.5)
    cfg = ShiftConfig(kind="noise", noise_std=0.1)

    client1 = apply_shift(x, 1, cfg, np.random.default_rng(0))
    client2 = apply_shift(x, 2, cfg, np.random.default_rng(0))

    assert not torch.equal(client1, client2)


def test_noise_is_clamped_to_the_pixel_range() -> None:
    x = torch.ones(2, 1, 8, 8)

    out = apply_shift(x, 0, ShiftConfig(kind="noise", noise_std=0.5), rng())

    assert out.max().item() <= 1.0
    assert out.min().item() >= 0.0


def test_blur_preserves_a_constant_image() -> None:
    x = torch.full((1, 3, 6, 6), 0.3)

    out = apply_shift(x, 0, ShiftConfig(kind="blur", blur_sigma=1.5), rng())

    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=1e-6)
    assert out.mean().item() == pytest.approx(0.3, abs=1e-6)


def test_blur_spreads_a_point_and_keeps_its_mass() -> None:
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0

    out = gaussian_blur(x, 1.0)

    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert 0.1 < out[0, 0, 4, 4].item() < 0.2  # 1 / (2 pi sigma^2) = 0.159
    assert torch.allclose(out[0, 0], out[0, 0].T, atol=1e-7)  # isotropic


# --------------------------------------------------------------------------- who is shifted


def test_clients_not_listed_are_unchanged() -> None:
    x = ramp()
    cfg = ShiftConfig(kind="invert", clients=[1, 3])

    unshifted = apply_shift(x, 0, cfg, rng())
    shifted = apply_shift(x, 1, cfg, rng())

    assert unshifted is x
    assert torch.allclose(shifted, 1.0 - x)
    assert [is_shifted(i, cfg) for i in range(4)] == [False, True, False, True]


def test_kind_none_changes_nothing() -> None:
    x = ramp()

    assert apply_shift(x, 0, ShiftConfig(kind="none"), rng()) is x


def test_shift_normalized_inverts_in_pixel_space() -> None:
    x01 = ramp()
    mean, std = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.2, 0.3, 0.4])
    view = (3, 1, 1)
    x = (x01 - mean.view(view)) / std.view(view)

    out = apply_shift_normalized(x, 0, ShiftConfig(kind="invert"), rng(), mean, std)

    assert torch.allclose(out, ((1.0 - x01) - mean.view(view)) / std.view(view), atol=1e-5)


def test_shift_rng_depends_on_seed_and_client() -> None:
    draws = [shift_rng(seed, client).integers(1 << 30) for seed, client in [(0, 0), (0, 1), (1, 0)]]

    assert shift_rng(0, 0).integers(1 << 30) == draws[0]
    assert len(set(draws)) == 3


# --------------------------------------------------------------------------- validation


def test_validate_shift_accepts_defaults_and_every_kind() -> None:
    for kind in SHIFT_KINDS:
        validate_shift(ShiftConfig(kind=kind), num_clients=10)  # must not raise


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            ShiftConfig(kind="foo"),
            "shift.kind: unknown 'foo' (allowed: none, rotation, rotated_family, invert, "
            "permute_channels, noise, blur, contrast)",
        ),
        (ShiftConfig(noise_std=-1.0), "shift.noise_std: must be >= 0, got -1.0"),
        (ShiftConfig(blur_sigma=-0.5), "shift.blur_sigma: must be >= 0, got -0.5"),
        (ShiftConfig(angle=float("nan")), "shift.angle: must be a finite number"),
        (ShiftConfig(contrast=[1.5, 0.5]), "shift.contrast: must be [low, high] with low <= high"),
        (ShiftConfig(contrast=[-1.0, 0.5]), "shift.contrast: low must be >= 0.0"),
        (ShiftConfig(brightness=[0.1]), "shift.brightness: must be [low, high]"),
        (ShiftConfig(clients=[-1]), "shift.clients: client ids must be integers >= 0"),
        (ShiftConfig(clients=[10]), "shift.clients: client 10 does not exist"),
    ],
)
def test_validate_shift_names_key_and_value(cfg: ShiftConfig, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_shift(cfg, num_clients=10)

    assert str(info.value).startswith(message)
