"""A compressor from an installed package (``tests/plugin_channel``: half precision) is
found by entry point, validated by name and run end to end with its bytes counted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from plugins import install_plugin

from fedsim.algorithms.channels import channel_classes, clear_registry
from fedsim.errors import ConfigError

COMMON = ["scenario.num_clients=3", "backbone.width=0.25", "train.local_steps=2",
          "runtime.threads=1", "progress=false"]  # fmt: skip


@pytest.fixture
def fp16_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The plug-in pip-installed into a folder this process then imports from."""
    site = install_plugin("plugin_channel", tmp_path)
    monkeypatch.syspath_prepend(str(site))
    clear_registry()  # the registry was read before the package existed
    yield
    monkeypatch.undo()
    clear_registry()


def test_an_unknown_compressor_is_one_line_naming_the_registered_ones(tmp_path: Path) -> None:
    from fedsim.engine.conf import compose

    with pytest.raises(ConfigError) as err:
        compose(["channel.up=fp16", f"output_dir={tmp_path}"])
    assert str(err.value) == (
        "channel.up.name: unknown 'fp16' (allowed: identity, qsgd, randk, sparse, topk)"
    )


def test_a_plugin_compressor_runs_end_to_end_with_its_bytes_counted(
    fp16_installed: None, tmp_path: Path
) -> None:
    import torch

    from fedsim.api import run
    from fedsim.engine.conf import compose
    from fedsim.models.modelzoo import initial_model

    assert "fp16" in channel_classes()
    # Act: the same round through the identity channel and through fp16
    plain = run(strategy="fedavg", rounds=1, overrides=[*COMMON, f"output_dir={tmp_path / 'a'}"])
    half = run(strategy="fedavg", rounds=1,
               overrides=[*COMMON, "channel.up=fp16", f"output_dir={tmp_path / 'b'}"])  # fmt: skip
    # Assert: 2 bytes per weight; buffers (statistics) and integers travel as they are
    backbone = compose([*COMMON, f"output_dir={tmp_path}"]).backbone
    model = initial_model(backbone, (1, 8, 8), 10, 0)  # the embedded digits, seed 0
    buffers = {name for name, _ in model.named_buffers()}
    per_client = sum(
        t.numel() * 2
        if t.is_floating_point() and k not in buffers
        else t.numel() * t.element_size()
        for k, t in model.state_dict().items()
    )
    dense = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert plain.metrics["comm/bytes_up"] == 3 * dense
    assert half.metrics["comm/bytes_up"] == 3 * per_client < 0.6 * 3 * dense
    # the decoded updates differ from the exact ones by float16 rounding only
    a = torch.load(plain.run_dir / "final_model.pt")
    b = torch.load(half.run_dir / "final_model.pt")
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-3), k
    assert any(not torch.equal(a[k], b[k]) for k in a)  # and it did compress something
