"""Figures drawn from stored results: what each shows, one colour per method, one legend, no misleading curve."""

import numpy as np
from helpers import curve_table, sweep_summary

from bench.figures import groups_figure, kcurve_figure, overlay_figure, tau_figure, write_figures
from bench.report import summarise
from bench.shapes.world import PALETTE


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
    assert [p.name for p in paths] == ["fig_kcurve.png", "fig_groups.png", "fig_tau.png", "fig_overlays.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_overlay_image_and_heat_share_one_extent_and_outlines_avoid_the_palette():
    """The heat map lies exactly over the image (a half-pixel shift left strips at two edges on 24 px images), and
    neither outline colour is one the shapes world paints objects with."""
    image = np.zeros((24, 24, 3), np.uint8)
    cell = {"heat": np.random.rand(12, 12).astype(np.float32), "mask": np.eye(24, dtype=bool), "tau": 0.4}
    fig = overlay_figure({"items": [{"title": "t", "image": image, "ref": np.eye(24, dtype=bool),
                                     "maps": {"daam all": cell}}]})
    extents = {tuple(im.get_extent()) for ax in fig.axes for im in ax.get_images()}
    assert extents == {(-0.5, 23.5, 23.5, -0.5)}
    outlines = {tuple(np.round(c.get_edgecolor()[0][:3], 3)) for ax in fig.axes for c in ax.collections}
    palette = {tuple(np.round(np.array(rgb) / 255, 3)) for rgb in PALETTE.values()}
    assert outlines and not outlines & palette


def test_groups_figure_shows_the_oracle_at_its_tau():
    labels = [t.get_text() for t in groups_figure(sweep_summary(), ["relevance"]).axes[0].get_yticklabels()]
    assert "relevance=oracle selective k=20 tau=0.5" in labels and len(labels) == 3 + 3 + 2


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
    assert kcurve_figure(summary, ["relevance"]).axes[0].texts[0].get_text().startswith("no k-curve in this run")
