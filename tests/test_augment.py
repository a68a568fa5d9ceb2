"""fedsim.data.augment: recipes, validation, and each op checked on hand-made images."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from fedsim.config import AugmentConfig
from fedsim.data.augment import (
    RECIPES,
    Augmenter,
    build_augmenter,
    resolve,
    validate_augment,
)
from fedsim.data.augment_params import AugParams
from fedsim.errors import ConfigError

MEAN = torch.tensor([0.5, 0.4, 0.3])
STD = torch.tensor([0.25, 0.2, 0.3])
OP_KEYS = [f.name for f in fields(AugmentConfig) if f.name != "recipe"]


def augmenter(channels: int = 3, **ops: object) -> Augmenter:
    """An augmenter of the ``none`` recipe with ``ops`` overridden, built directly."""
    return Augmenter(resolve(AugmentConfig(**ops)), MEAN[:channels], STD[:channels])  # type: ignore[arg-type]


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    c = pixels.shape[1]
    return (pixels - MEAN[:c].view(1, -1, 1, 1)) / STD[:c].view(1, -1, 1, 1)


def pixels_of(x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    return x * STD[:c].view(1, -1, 1, 1) + MEAN[:c].view(1, -1, 1, 1)


def params(n: int, jitter: list[float] | None = None, gray: bool = False) -> AugParams:
    """Hand-set parameters for augmenters without geometric ops."""
    return AugParams(
        shift=torch.zeros(n, 2, dtype=torch.long),
        crop=torch.zeros(n, 0),
        flip=torch.zeros(n, dtype=torch.bool),
        jitter=torch.tensor(jitter or [1.0, 1.0, 1.0, 0.0]).repeat(n, 1),
        gray=torch.full((n,), gray),
    )


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 6, size: int = 12, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Normalised images whose pixels are uniform on [0, 1]."""
    return normalise(torch.rand(n, channels, size, size, generator=gen(seed)))


# ------------------------------------------------------------------ recipes


def test_recipes_set_every_op_and_nothing_else() -> None:
    assert set(RECIPES) == {"none", "cifar", "fraug_digits", "simclr"}
    for values in RECIPES.values():
        assert sorted(values) == sorted(OP_KEYS)


def test_recipe_values_follow_their_sources() -> None:
    cifar, fraug, simclr = RECIPES["cifar"], RECIPES["fraug_digits"], RECIPES["simclr"]
    assert (cifar["crop_padding"], cifar["flip"]) == (4, 0.5)
    assert fraug["resized_crop_scale"] == [0.7, 1.0] and fraug["flip"] == 0.0
    assert [fraug[k] for k in ("brightness", "contrast", "saturation", "hue")] == [0.3] * 4
    assert (fraug["jitter_p"], fraug["grayscale"]) == (1.0, 0.1)
    assert simclr["resized_crop_scale"] == [0.08, 1.0] and simclr["flip"] == 0.5
    assert [simclr[k] for k in ("brightness", "contrast", "saturation", "hue")] == [
        0.4,
        0.4,
        0.4,
        0.1,
    ]
    assert (simclr["jitter_p"], simclr["grayscale"]) == (0.8, 0.2)


def test_resolve_picks_the_recipe_then_applies_overrides() -> None:
    assert resolve(AugmentConfig()) == RECIPES["none"]
    assert resolve(AugmentConfig(), scenario_default="cifar") == RECIPES["cifar"]
    # an explicit recipe wins over the scenario's
    assert resolve(AugmentConfig(recipe="simclr"), "cifar") == RECIPES["simclr"]
    ops = resolve(AugmentConfig(flip=0.25, resized_crop_scale=[0.5, 1.0]), "cifar")
    assert ops["flip"] == 0.25 and ops["crop_padding"] == 4
    assert ops["resized_crop_scale"] == [0.5, 1.0]
    # resolving never changes the recipe table
    ops["resized_crop_scale"].append(9.0)
    assert RECIPES["simclr"]["resized_crop_scale"] == [0.08, 1.0]
    resolve(AugmentConfig(recipe="simclr"))["resized_crop_scale"].append(9.0)
    assert RECIPES["simclr"]["resized_crop_scale"] == [0.08, 1.0]


def test_build_returns_none_when_nothing_can_change_an_image() -> None:
    assert build_augmenter(AugmentConfig(), MEAN, STD) is None
    assert build_augmenter(AugmentConfig(flip=0.0), MEAN, STD) is None
    assert build_augmenter(AugmentConfig(brightness=0.5, jitter_p=0.0), MEAN, STD) is None
    # saturation, hue and grayscale do nothing to grey images
    grey_only = AugmentConfig(saturation=0.5, hue=0.2, grayscale=1.0)
    assert build_augmenter(grey_only, MEAN[:1], STD[:1]) is None
    assert build_augmenter(grey_only, MEAN, STD) is not None
    assert build_augmenter(AugmentConfig(), MEAN, STD, scenario_default="cifar") is not None


# ------------------------------------------------------------------ validation

BAD = [
    (AugmentConfig(recipe="autoaugment"), "train.augment.recipe: unknown 'autoaugment'"),
    (AugmentConfig(flip=1.5), "train.augment.flip: invalid 1.5"),
    (AugmentConfig(jitter_p=-0.1), "train.augment.jitter_p: invalid -0.1"),
    (AugmentConfig(grayscale=2.0), "train.augment.grayscale: invalid 2.0"),
    (AugmentConfig(brightness=-0.2), "train.augment.brightness: invalid -0.2"),
    (AugmentConfig(contrast=-1.0), "train.augment.contrast: invalid -1.0"),
    (AugmentConfig(saturation=-0.5), "train.augment.saturation: invalid -0.5"),
    (AugmentConfig(hue=0.6), "train.augment.hue: invalid 0.6"),
    (AugmentConfig(hue=-0.1), "train.augment.hue: invalid -0.1"),
    (AugmentConfig(crop_padding=-1), "train.augment.crop_padding: invalid -1"),
    (AugmentConfig(resized_crop_scale=[0.5]), r"train.augment.resized_crop_scale: invalid \[0.5\]"),
    (
        AugmentConfig(resized_crop_scale=[0.9, 0.5]),
        r"train.augment.resized_crop_scale: invalid \[0.9, 0.5\]",
    ),
    (
        AugmentConfig(resized_crop_scale=[0.0, 1.0]),
        r"train.augment.resized_crop_scale: invalid \[0.0, 1.0\]",
    ),
    (
        AugmentConfig(resized_crop_scale=[0.5, 1.5]),
        r"train.augment.resized_crop_scale: invalid \[0.5, 1.5\]",
    ),
    (
        AugmentConfig(resized_crop_ratio=[2.0, 1.0]),
        r"train.augment.resized_crop_ratio: invalid \[2.0, 1.0\]",
    ),
    (
        AugmentConfig(resized_crop_ratio=[0.0, 1.0]),
        r"train.augment.resized_crop_ratio: invalid \[0.0, 1.0\]",
    ),
]


@pytest.mark.parametrize(("cfg", "message"), BAD)
def test_validate_names_the_key_the_value_and_what_is_allowed(
    cfg: AugmentConfig, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        validate_augment(cfg)
    text = str(err.value)
    assert "\n" not in text and "allowed" in text


def test_validate_lists_the_recipes_and_uses_the_given_key() -> None:
    with pytest.raises(ConfigError, match="cifar, fraug_digits, none, simclr"):
        validate_augment(AugmentConfig(recipe="x"))
    with pytest.raises(ConfigError, match=r"^scenario.train.augment.flip: invalid 2\.0"):
        validate_augment(AugmentConfig(flip=2.0), key="scenario.train.augment")
    with pytest.raises(
        ConfigError, match=r"train\.augment\.recipe: unknown 'x', from the scenario"
    ):
        validate_augment(AugmentConfig(), scenario_default="x")


def test_validate_uses_the_image_size_and_channels_when_known() -> None:
    validate_augment(AugmentConfig(crop_padding=31), image_size=32)
    with pytest.raises(
        ConfigError,
        match=r"crop_padding: invalid 32 \(allowed: an integer from 0 to 31, below the image",
    ):
        validate_augment(AugmentConfig(crop_padding=32), image_size=32)
    with pytest.raises(ConfigError, match=r"train\.augment\.contrast: invalid 0\.4 for 4-channel"):
        validate_augment(AugmentConfig(recipe="simclr"), channels=4)
    validate_augment(AugmentConfig(brightness=0.4), channels=4)  # brightness needs no RGB


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_is_valid_for_32px_rgb_and_grey(recipe: str) -> None:
    validate_augment(AugmentConfig(recipe=recipe), image_size=32, channels=3)
    validate_augment(AugmentConfig(recipe=recipe), image_size=32, channels=1)


# ------------------------------------------------------------------ seeding


@pytest.mark.parametrize("recipe", ["cifar", "fraug_digits", "simclr"])
def test_same_seed_same_output_different_seed_different(recipe: str) -> None:
    aug = build_augmenter(AugmentConfig(recipe=recipe), MEAN, STD)
    assert aug is not None
    x = images(8, 16)
    torch.manual_seed(1)  # the global generator must not matter
    first = aug(x, gen(7))
    torch.manual_seed(2)
    again = aug(x, gen(7))
    other = aug(x, gen(8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, x)


def test_two_views_from_one_generator_differ() -> None:
    aug = build_augmenter(AugmentConfig(recipe="simclr"), MEAN, STD)
    assert aug is not None
    g, x = gen(3), images(8, 16)
    assert not torch.allclose(aug(x, g), aug(x, g))


def test_concatenated_parameters_equal_augmenting_each_client_alone() -> None:
    aug = build_augmenter(AugmentConfig(recipe="simclr", crop_padding=2), MEAN, STD)
    assert aug is not None
    batches = [images(n, 16, seed=s) for s, n in enumerate([3, 5, 1])]
    alone = [aug(x, gen(100 + i)) for i, x in enumerate(batches)]
    parts = [aug.sample(len(x), gen(100 + i)) for i, x in enumerate(batches)]
    together = aug.apply(torch.cat(batches), AugParams.cat(parts))
    assert torch.allclose(together, torch.cat(alone), atol=1e-6)


def test_sample_draws_with_the_configured_probabilities() -> None:
    aug = augmenter(flip=0.3, brightness=0.2, jitter_p=0.6, grayscale=0.1)
    p = aug.sample(20_000, gen(0))
    assert p.flip.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert p.gray.float().mean().item() == pytest.approx(0.1, abs=0.02)
    jittered = p.jitter[:, 0] != 1.0
    assert jittered.float().mean().item() == pytest.approx(0.6, abs=0.02)


# ------------------------------------------------------------------ geometry


def test_flip_one_mirrors_exactly_and_flip_zero_is_identity() -> None:
    x = images(4, 5)
    assert torch.equal(augmenter(flip=1.0)(x, gen(0)), x.flip(3))
    assert torch.equal(augmenter(flip=0.0)(x, gen(0)), x)


def test_padded_crop_is_a_shifted_copy_with_black_borders() -> None:
    pad, size = 2, 6
    pixels = torch.arange(16 * 3 * size * size, dtype=torch.float32).view(16, 3, size, size)
    pixels = pixels / pixels.max() * 0.9 + 0.05  # distinct pixels in (0, 1), none black
    aug = augmenter(crop_padding=pad)
    p = aug.sample(16, gen(4))
    out = pixels_of(aug.apply(normalise(pixels), p))
    assert out.shape == pixels.shape
    assert p.shift.abs().max() <= pad and (p.shift != 0).any(dim=1).sum() >= 8
    padded = F.pad(pixels, (pad, pad, pad, pad))
    for i, (dy, dx) in enumerate(p.shift.tolist()):
        window = padded[i, :, pad + dy : pad + dy + size, pad + dx : pad + dx + size]
        assert torch.allclose(out[i], window, atol=1e-6)
        if dy > 0:  # the bottom rows came from the zero padding: black pixels
            assert torch.allclose(out[i, :, -dy:], torch.zeros(()), atol=1e-6)
        if dx < 0:  # the left columns too
            assert torch.allclose(out[i, :, :, :-dx], torch.zeros(()), atol=1e-6)


def test_flip_comes_after_the_crop() -> None:
    x = images(8, 6)
    aug = augmenter(crop_padding=1, flip=1.0)
    p = aug.sample(8, gen(5))
    no_flip = AugParams(p.shift, p.crop, torch.zeros(8, dtype=torch.bool), p.jitter, p.gray)
    assert torch.allclose(aug.apply(x, p), aug.apply(x, no_flip).flip(3), atol=1e-6)


def test_resized_crop_of_the_whole_image_is_identity() -> None:
    x = images(4, 9)
    aug = augmenter(resized_crop_scale=[1.0, 1.0], resized_crop_ratio=[1.0, 1.0])
    assert torch.allclose(aug(x, gen(0)), x, atol=1e-5)


def test_resized_crop_is_a_bilinear_resize_of_its_box() -> None:
    x = images(6, 16)
    aug = augmenter(resized_crop_scale=[0.5, 0.5], resized_crop_ratio=[1.0, 1.0])
    p = aug.sample(6, gen(2))
    top, left, height, width = aug._boxes(p.crop, 16, 16)
    assert height.tolist() == [11.0] * 6 and width.tolist() == [11.0] * 6  # round(sqrt(128))
    assert len(set(zip(top.tolist(), left.tolist(), strict=True))) > 1
    out = aug.apply(x, p)
    for i in range(6):
        t, s = int(top[i]), int(left[i])
        box = x[i : i + 1, :, t : t + 11, s : s + 11]
        expected = F.interpolate(box, size=(16, 16), mode="bilinear", align_corners=False)
        assert torch.allclose(out[i : i + 1], expected, atol=1e-5)


def test_resized_crop_falls_back_to_the_centre_crop_when_no_box_fits() -> None:
    # area 1 with ratio 2 never fits a square image: torchvision takes the centre
    # crop of the ratio closest to the image's, w = 12 and h = round(12 / 2) = 6
    aug = augmenter(resized_crop_scale=[1.0, 1.0], resized_crop_ratio=[2.0, 2.0])
    top, left, height, width = aug._boxes(aug.sample(3, gen(0)).crop, 12, 12)
    assert top.tolist() == [3.0] * 3 and left.tolist() == [0.0] * 3
    assert height.tolist() == [6.0] * 3 and width.tolist() == [12.0] * 3


def test_resized_crop_boxes_stay_inside_the_image_in_the_allowed_ranges() -> None:
    aug = augmenter(resized_crop_scale=[0.08, 1.0])
    top, left, height, width = aug._boxes(aug.sample(4000, gen(1)).crop, 32, 32)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 32).all() and (left + width <= 32).all()
    area = height * width / 32**2
    assert area.min() >= 0.06 and area.max() <= 1.0 and area.min() < 0.12
    aspect = width / height
    assert aspect.min() >= 0.7 and aspect.max() <= 1.45


# ------------------------------------------------------------------ colour


def test_brightness_scales_a_constant_image_by_its_factor_and_clamps() -> None:
    aug = augmenter(brightness=0.5)
    p = aug.sample(2000, gen(0))
    factors = p.jitter[:, 0]
    assert factors.min() >= 0.5 and factors.max() <= 1.5  # [max(0, 1 - s), 1 + s]
    assert factors.min() < 0.55 and factors.max() > 1.45
    grey = torch.full((2000, 3, 2, 2), 0.8)
    out = pixels_of(aug.apply(normalise(grey), p))
    expected = (0.8 * factors).clamp(max=1.0).view(-1, 1, 1, 1).expand_as(out)
    assert torch.allclose(out, expected, atol=1e-6)
    assert aug.sample(500, gen(1)).jitter[:, 0].min() >= 0.5
    assert augmenter(brightness=2.0).sample(2000, gen(0)).jitter[:, 0].min() >= 0.0


def test_contrast_and_saturation_factor_zero_give_the_mean_and_the_grey_level() -> None:
    pixels = torch.rand(2, 3, 4, 4, generator=gen(0))
    luma = 0.2989 * pixels[:, 0] + 0.587 * pixels[:, 1] + 0.114 * pixels[:, 2]
    contrast = augmenter(contrast=1.0)
    out = pixels_of(contrast.apply(normalise(pixels), params(2, [1.0, 0.0, 1.0, 0.0])))
    mean = luma.mean(dim=(1, 2)).view(2, 1, 1, 1).expand_as(out)
    assert torch.allclose(out, mean, atol=1e-6)
    saturation = augmenter(saturation=1.0)
    out = pixels_of(saturation.apply(normalise(pixels), params(2, [1.0, 1.0, 0.0, 0.0])))
    assert torch.allclose(out, luma[:, None].expand_as(out), atol=1e-6)


def test_hue_shift_turns_the_primaries_and_keeps_grey() -> None:
    pixels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.5, 0.0], [0.3, 0.3, 0.3]])
    x = normalise(pixels.view(1, 4, 3).permute(0, 2, 1)[..., None])  # 1 x 3 x 4 x 1
    aug = augmenter(hue=0.5)
    third = pixels_of(aug.apply(x, params(1, [1.0, 1.0, 1.0, 1 / 3])))[0, :, :, 0].T
    sixth = pixels_of(aug.apply(x, params(1, [1.0, 1.0, 1.0, 1 / 6])))[0, :, :, 0].T
    assert torch.allclose(third[0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)  # red -> green
    assert torch.allclose(third[1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)  # green -> blue
    assert torch.allclose(sixth[2], torch.tensor([0.5, 1.0, 0.0]), atol=1e-5)  # orange -> lime
    assert torch.allclose(third[3], pixels[3], atol=1e-5)  # grey has no hue
    assert torch.allclose(aug.apply(x, params(1)), x, atol=1e-6)  # a zero shift


def test_jitter_keeps_pixels_in_range() -> None:
    aug = augmenter(brightness=0.9, contrast=0.9, saturation=0.9, hue=0.5)
    out = pixels_of(aug(images(32, 8), gen(0)))
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    assert out.min() < 0.01 and out.max() > 0.99  # strong factors reach both ends


def test_grayscale_copies_the_601_luma_to_every_channel() -> None:
    pixels = torch.rand(3, 3, 5, 5, generator=gen(1))
    out = pixels_of(augmenter(grayscale=1.0)(normalise(pixels), gen(0)))
    luma = 0.2989 * pixels[:, 0] + 0.587 * pixels[:, 1] + 0.114 * pixels[:, 2]
    for c in range(3):
        assert torch.allclose(out[:, c], luma, atol=1e-6)


def test_output_is_normalised_like_the_input() -> None:
    # a black pixel is 0 on the pixel scale and -mean/std once normalised; brightness
    # multiplies pixels, not normalised values
    pixels = torch.full((1, 3, 4, 4), 0.5)
    aug = augmenter(brightness=0.5, crop_padding=1)
    p = aug.sample(1, gen(0))
    p = AugParams(torch.tensor([[1, 0]]), p.crop, p.flip, torch.tensor([[1.2, 1, 1, 0]]), p.gray)
    out = aug.apply(normalise(pixels), p)
    assert torch.allclose(out[0, :, -1], (-MEAN / STD)[:, None].expand(3, 4), atol=1e-6)
    assert torch.allclose(pixels_of(out)[0, :, :3], torch.full((3, 3, 4), 0.6), atol=1e-6)


def test_grey_images_get_brightness_and_contrast_only() -> None:
    aug = build_augmenter(AugmentConfig(recipe="fraug_digits"), MEAN[:1], STD[:1])
    assert aug is not None
    x = images(4, 8, channels=1)
    out = aug(x, gen(0))
    assert out.shape == x.shape
    assert aug.strength[2:] == (0.0, 0.0) and aug.grayscale == 0.0


def test_apply_keeps_dtype_and_rejects_mismatched_inputs() -> None:
    aug = build_augmenter(AugmentConfig(recipe="simclr"), MEAN, STD)
    assert aug is not None
    for dtype in (torch.float64, torch.bfloat16):
        x = images(2, 8).to(dtype)
        assert aug(x, gen(0)).dtype == dtype
    assert aug(images(0, 8), gen(0)).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        aug(images(2, 8, channels=1), gen(0))


@pytest.mark.gpu
def test_cuda_equals_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    aug = build_augmenter(AugmentConfig(recipe="simclr", crop_padding=2), MEAN, STD)
    assert aug is not None
    x = images(16, 32)
    p = aug.sample(16, gen(0))
    on_gpu = aug.apply(x.cuda(), p.to("cuda")).cpu()
    assert torch.allclose(on_gpu, aug.apply(x, p), atol=1e-4)
