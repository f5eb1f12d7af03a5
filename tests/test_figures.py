"""Figures drawn from stored results: what each shows, one colour per method, one legend, no misleading curve."""

import matplotlib.colors
import numpy as np
from helpers import curve_table, sweep_summary

from bench.figures import _colours, groups_figure, kcurve_figure, overlay_figure, tau_figure, write_figures
from bench.report import summarise
from bench.shapes.world import PALETTE
from bench.sweep import overlay_columns


def test_kcurve_groups_and_all_figures_draw(tmp_path):
    summary = summarise(curve_table())
    fig = kcurve_figure(summary)
    line = next(ln for ln in fig.axes[0].lines if ln.get_label().startswith("kcurve"))
    expect = summary[summary.method == "kcurve"].sort_values("n_heads")
    np.testing.assert_allclose(line.get_xdata(), expect.n_heads)
    np.testing.assert_allclose(line.get_ydata(), expect.mIoU)
    bars = groups_figure(summary).axes[0].patches
    points = summary[summary.method != "kcurve"]
    np.testing.assert_allclose(sorted(b.get_width() for b in bars), sorted(points.mIoU))

    image = np.zeros((32, 32, 3), np.uint8)
    cell = {"heat": np.random.rand(16, 16).astype(np.float32), "mask": np.eye(32, dtype=bool), "tau": 0.4}
    overlays = {"items": [{"title": "a s0: cat", "image": image, "ref": np.eye(32, dtype=bool),
                           "maps": {"daam all": cell}}]}
    paths = write_figures(summary, tmp_path, overlays=overlays)
    assert [p.name for p in paths] == ["fig_kcurve.png", "fig_groups.png", "fig_overlays.png"]  # one tau: no fig_tau
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    # no placeholder files: without a k-curve, a second tau or a pair to show, those figures are not written
    # (and an older file of that name goes)
    single = summarise(curve_table().query("method != 'kcurve' and tau == 0.4"))
    assert [p.name for p in write_figures(single, tmp_path, overlays=None)] == ["fig_groups.png"]
    assert sorted(p.name for p in tmp_path.glob("fig_*.png")) == ["fig_groups.png"]


def test_overlay_image_and_heat_share_one_extent_and_outlines_avoid_the_palette():
    """The heat map lies exactly over the image (a half-pixel shift left strips at two edges on 24 px images), and
    neither outline colour is one the shapes world paints objects with."""
    image = np.zeros((24, 24, 3), np.uint8)
    cell = {"heat": np.random.rand(12, 12).astype(np.float32), "mask": np.eye(24, dtype=bool), "tau": 0.4}
    fig = overlay_figure({"items": [{"title": "t", "image": image, "ref": np.eye(24, dtype=bool),
                                     "maps": {"daam all": cell}}]})
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    extents = {tuple(im.get_extent()) for ax in panels for im in ax.get_images()}
    assert extents == {(-0.5, 23.5, 23.5, -0.5)}
    outlines = {tuple(np.round(c.get_edgecolor()[0][:3], 3)) for ax in panels for c in ax.collections}
    palette = {tuple(np.round(np.array(rgb) / 255, 3)) for rgb in PALETTE.values()}
    assert outlines and not outlines & palette


def test_groups_figure_shows_the_oracle_at_its_tau_pools_repeats_and_has_a_legend():
    ax = groups_figure(sweep_summary(), ["relevance"]).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "relevance=oracle selective k=20 tau=0.5" in labels
    assert "relevance=hrv,random daam all" in labels and len(labels) == 1 + 2 + 2 + 2  # DAAM once for hrv, random
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["daam", "selective"]


def test_tau_figure_colours_one_method_alike_in_every_panel_with_one_legend():
    summary = sweep_summary()
    fig = tau_figure(summary, ["relevance"])
    colours = {}
    for ax in fig.axes:
        for container in ax.containers:  # one errorbar per (method, variant)
            colours.setdefault(container.get_label(), set()).add(container.lines[0].get_color())
    assert set(colours) == {"daam all", "selective k=10", "selective k=20"}
    assert all(len(c) == 1 for c in colours.values()) and len({c.pop() for c in colours.values()}) == 3
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["tau sensitivity relevance=hrv", "tau sensitivity relevance=random"]  # oracle: one tau only
    assert kcurve_figure(summary, ["relevance"]) is None


def test_colour_families_tell_every_method_and_variant_apart():
    labels = ["daam all", "selective k=10%", "selective k=25%", "selective k=50%", "bottom_k k=10%",
              "bottom_k k=25%", "centred_disc r=0.25", "end_of_text daam heads", "other_word daam heads"]
    colours = {label: matplotlib.colors.to_hex(c) for label, c in _colours(labels).items()}
    assert len(set(colours.values())) == len(labels)
    blue = [matplotlib.colors.rgb_to_hsv(matplotlib.colors.to_rgb(colours[k]))[0] for k in labels[1:4]]
    orange = [matplotlib.colors.rgb_to_hsv(matplotlib.colors.to_rgb(colours[k]))[0] for k in labels[4:6]]
    assert max(blue) - min(blue) < 0.05 and max(orange) - min(orange) < 0.05 and min(blue) - max(orange) > 0.3


def test_overlay_heat_is_normalised_with_one_colour_bar():
    image = np.zeros((24, 24, 3), np.uint8)
    cells = {name: {"heat": np.random.rand(12, 12).astype(np.float32) * 50 + 3, "mask": np.eye(24, dtype=bool),
                    "tau": 0.4} for name in ("daam all", "selective k=25%")}
    fig = overlay_figure({"items": [{"title": "t", "image": image, "ref": np.eye(24, dtype=bool), "maps": cells}]})
    heats = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "jet"]
    assert len(heats) == 2 and all(im.get_clim() == (0, 1) for im in heats)
    assert all(np.isclose(im.get_array().min(), 0) and np.isclose(im.get_array().max(), 1) for im in heats)
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1
    assert overlay_figure(None) is None


def test_merged_overlays_show_daam_once_and_each_jobs_headline_k():
    maps = {"daam all": 1, "selective k=10%": 2, "selective k=25%": 3, "selective k=50%": 4, "bottom_k k=25%": 5,
            "random end_of_text": 6}
    assert overlay_columns(maps) == ["daam all", "selective k=25%"]
    assert overlay_columns({"daam all": 1, "selective k=1": 2, "selective k=3": 3}) == ["daam all", "selective k=3"]
