"""Partition reports: the text table and the heatmap image."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from fedsim.tracking import raster
from fedsim.tracking.report import partition_heatmap, partition_heatmap_array, partition_table


def _small_case():
    # 3 clients over 2 sources; labels chosen so the rows can be checked by hand.
    labels = np.array([0, 0, 1, 2, 2, 2, 1, 1, 0, 3])
    domains = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    partitions = [np.array([0, 1, 2]), np.array([3, 4, 5, 6]), np.array([7, 8, 9])]
    return partitions, labels, domains


def test_table_rows_by_hand():
    partitions, labels, domains = _small_case()

    table = partition_table(partitions, labels, domains, ["mnist", "svhn"], num_classes=4)
    rows = {
        int(m.group(1)): m.group(0)
        for m in re.finditer(r"^\s*(\d+)\s+\d+\s+\d+\s.*$", table, flags=re.MULTILINE)
    }

    # client, samples, #classes, top classes, domains
    assert re.match(r"\s*0\s+3\s+2\s+0:67% 1:33%\s+mnist:100%$", rows[0])
    assert re.match(r"\s*1\s+4\s+2\s+2:75% 1:25%\s+svhn:75% mnist:25%$", rows[1])
    assert re.match(r"\s*2\s+3\s+3\s+0:33% 1:33% 3:33%\s+svhn:100%$", rows[2])
    assert "clients: 3 (0 empty)" in table
    assert "samples: 10 total, min 3 / median 3 / max 4 per client" in table
    assert "label skew" in table


def test_table_single_source_has_no_domain_column():
    partitions, labels, _ = _small_case()
    table = partition_table(partitions, labels, None, None, num_classes=4)
    assert "domains" not in table.splitlines()[0]
    assert "client" in table.splitlines()[0]


def test_table_truncates_many_clients_but_summarises_all():
    labels = np.arange(5000) % 10
    partitions = [np.array([2 * k, 2 * k + 1]) for k in range(2500)]

    table = partition_table(partitions, labels, None, None, num_classes=10, max_rows=20)
    lines = table.splitlines()

    assert len(lines) < 40
    assert "... 2480 clients not shown ..." in table
    assert re.search(r"^\s*0\s+2\s", table, flags=re.MULTILINE)
    assert re.search(r"^\s*2499\s+2\s", table, flags=re.MULTILINE)
    assert not re.search(r"^\s*1000\s", table, flags=re.MULTILINE)
    assert "clients: 2500 (0 empty)" in table
    assert "samples: 5000 total" in table


def test_table_empty_client():
    labels = np.array([0, 1])
    table = partition_table([np.array([0, 1]), np.array([], dtype=np.int64)], labels, None, None, 2)
    assert "clients: 2 (1 empty)" in table
    assert re.search(r"^\s*1\s+0\s+0\s+-$", table, flags=re.MULTILINE)


def test_heatmap_png_decodes_to_the_rendered_rgb_image(tmp_path):
    partitions, labels, domains = _small_case()

    path = partition_heatmap(
        partitions, labels, domains, ["mnist", "svhn"], 4, tmp_path / "sub" / "heat.png"
    )
    pixels = partition_heatmap_array(partitions, labels, domains, ["mnist", "svhn"], 4)

    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode == "RGB"
        decoded = np.asarray(image)
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert decoded.shape == pixels.shape
    assert np.array_equal(decoded, pixels)
    assert pixels.std() > 10  # not a blank canvas


def test_heatmap_many_clients_is_capped_in_width(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 20_000)
    partitions = np.split(rng.permutation(20_000), 2000)

    few = partition_heatmap_array(partitions[:100], labels, None, None, 10)
    many = partition_heatmap_array(partitions, labels, None, None, 10)

    assert many.shape == few.shape  # 2000 clients draw no wider than 100
    path = partition_heatmap(partitions, labels, None, None, 10, tmp_path / "h.png")
    assert path.stat().st_size > 0


def test_ramp_runs_through_its_three_stops() -> None:
    colours = raster.ramp(np.array([0.0, 0.5, 1.0]))
    assert colours.tolist() == [[68, 1, 84], [33, 145, 140], [253, 231, 37]]


def test_heat_panel_colours_each_cell_by_its_share_of_the_maximum() -> None:
    panel = raster.heat_panel(np.array([[0, 2, 4]]), ["a"], ["0", "1", "2"], "t", left=40)

    top, width, height = raster.LINE + 4, 24, 12  # below the title; 3 columns: widest cells
    centres = [panel[top + height // 2, 40 + c * width + width // 2] for c in range(3)]

    assert [c.tolist() for c in centres] == [[68, 1, 84], [33, 145, 140], [253, 231, 37]]


def test_text_is_drawn_from_its_glyphs_at_the_font_scale() -> None:
    one = np.array([[p == "#" for p in row] for row in [".#.", "##.", ".#.", ".#.", "###"]])
    scaled = np.repeat(np.repeat(one, raster.SCALE, axis=0), raster.SCALE, axis=1)

    assert np.array_equal(raster.text_mask("1"), scaled)
    assert raster.text_width("11") == 2 * raster.ADVANCE - raster.SCALE  # no trailing gap
    assert np.array_equal(raster.text_mask("A"), raster.text_mask("a"))  # capitals only
