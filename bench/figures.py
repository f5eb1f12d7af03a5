"""Figures of a run or a merged sweep (PNG, matplotlib's object API, no pyplot state):

- `fig_kcurve.png`: mIoU vs k for every k-curve method (95% CI band over prompts; a random relevance's curve
  drawn as a grey band), the DAAM line with its CI, and the point methods (selective k=...) at their k;
- `fig_groups.png`: mIoU with its CI per (config, method, variant) at the reference tau: the per block /
  resolution group bars of a sweep over `method.blocks` / `method.resolutions`;
- `fig_tau.png`: mIoU vs tau per (config, method, variant);
- `fig_overlays.png`: images with the reference mask and each method's heat map and mask (`collect_overlays`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import torch
from matplotlib.figure import Figure

from bench.evaluate import Context, KCurve, Method, load_sample
from bench.report import config_label, curve_methods, reference_tau
from bench.score import heat_to_mask
from bench.store import GenerateStore, MaskStore


def write_figures(summary: pd.DataFrame, out_dir: Path, by: list[str] = (), overlays: dict | None = None) -> list[Path]:
    """Draw the four figures into `out_dir`; returns their paths."""
    paths = []
    for name, fig in (("kcurve", kcurve_figure(summary, by)), ("groups", groups_figure(summary, by)),
                      ("tau", tau_figure(summary, by)), ("overlays", overlay_figure(overlays))):
        path = Path(out_dir) / f"fig_{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
    return paths


def _label(row: pd.Series, by: list[str], *parts: str) -> str:
    return " ".join(p for p in (config_label(row, by), *parts) if p)


def _placeholder(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, wrap=True)
    ax.set_axis_off()


def _panels(summary: pd.DataFrame, by: list[str], height: float = 3.8) -> tuple[Figure, list]:
    """A figure with one panel per sweep config (rows of 3, shared y) and [(panel, config label, rows)]."""
    groups = list(summary.groupby(by, sort=False)) if by else [((), summary)]
    ncols = min(3, len(groups))
    nrows = -(-len(groups) // ncols)
    fig = Figure(figsize=(5.2 * ncols, height * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False, sharey=True).flat)
    for ax in axes[len(groups):]:
        ax.set_axis_off()
    return fig, [(ax, config_label(rows.iloc[0], by), rows) for ax, (_, rows) in zip(axes, groups)]


def _colours(summary: pd.DataFrame) -> dict[str, str]:
    """One colour per method, the same in every panel (DAAM black, random controls grey)."""
    palette = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"] * 4)
    return {m: "black" if m == "daam" else "grey" if "random" in m else next(palette)
            for m in summary["method"].unique()}


def kcurve_figure(summary: pd.DataFrame, by: list[str] = ()) -> Figure:
    """mIoU vs k at the reference tau, one panel per config: each k-curve with its 95% CI band (a random
    relevance's curve as a grey band), the DAAM line and band, point methods (selective k=...) with CI bars."""
    by = list(by)
    curves = curve_methods(summary, by)
    tau = reference_tau(summary)
    colours = _colours(summary)
    fig, panels = _panels(summary[np.isclose(summary["tau"], tau)], by)
    for ax, label, rows in panels:
        for method, grp in rows[rows["method"].isin(curves)].groupby("method", sort=False):
            grp = grp.sort_values("n_heads")
            random = "random" in method
            ax.fill_between(grp["n_heads"], grp["ci95_lo"], grp["ci95_hi"], color=colours[method], lw=0,
                            alpha=0.3 if random else 0.15)
            ax.plot(grp["n_heads"], grp["mIoU"], color=colours[method], lw=1.2, ls="--" if random else "-",
                    label=f"{method} (band: 95% CI)")
        for _, r in rows[rows["method"] == "daam"].iterrows():
            ax.axhline(r["mIoU"], color="black", ls=":", lw=1.2, label=f"DAAM ({r['n_heads']} heads)")
            ax.axhspan(r["ci95_lo"], r["ci95_hi"], color="black", alpha=0.06)
        for method, grp in rows[~rows["method"].isin(curves) & (rows["method"] != "daam")].groupby("method",
                                                                                                    sort=False):
            ax.errorbar(grp["n_heads"], grp["mIoU"], fmt="o", ms=4, capsize=2, color=colours[method], label=method,
                        yerr=np.nan_to_num(np.vstack([grp["mIoU"] - grp["ci95_lo"], grp["ci95_hi"] - grp["mIoU"]])))
        if not curves:
            ax.text(0.5, 0.02, "no k-curve in this run (method=kcurve adds every k)", transform=ax.transAxes,
                    ha="center", fontsize=7)
        ax.set_xlabel("k (heads averaged)")
        ax.set_title(f"{label} tau={tau:g}".strip(), fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_ylabel("mIoU (95% CI over prompts)")
    panels[0][0].legend(fontsize=7)
    return fig


def groups_figure(summary: pd.DataFrame, by: list[str] = ()) -> Figure:
    """Horizontal bars: mIoU with its CI per (config, method, variant) at the reference tau."""
    by = list(by)
    tau = reference_tau(summary)
    rows = summary[np.isclose(summary["tau"], tau) & ~summary["method"].isin(curve_methods(summary, by))]
    labels = [_label(r, by, r["method"], r["variant"]) for _, r in rows.iterrows()]
    fig = Figure(figsize=(7, 1 + 0.32 * max(len(rows), 1)))
    ax = fig.subplots()
    if rows.empty:
        _placeholder(ax, "no point method (daam / selective) in this run")
        return fig
    y = np.arange(len(rows))
    err = np.vstack([rows["mIoU"] - rows["ci95_lo"], rows["ci95_hi"] - rows["mIoU"]])
    colors = ["black" if m == "daam" else "tab:blue" if m == "selective" else "tab:orange" for m in rows["method"]]
    ax.barh(y, rows["mIoU"], xerr=np.nan_to_num(err), color=colors, alpha=0.7, capsize=2)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"mIoU at tau = {tau:g} (95% CI over prompts)")
    ax.set_title("per config / block / resolution group")
    ax.grid(axis="x", alpha=0.3)
    return fig


def tau_figure(summary: pd.DataFrame, by: list[str] = ()) -> Figure:
    """mIoU vs tau with CI bars per (method, variant) of the point methods, one panel per config."""
    by = list(by)
    rows = summary[~summary["method"].isin(curve_methods(summary, by))]
    if rows.empty:
        fig = Figure(figsize=(5, 3))
        _placeholder(fig.subplots(), "no point method (daam / selective) in this run")
        return fig
    fig, panels = _panels(rows, by)
    for ax, label, grp_rows in panels:
        for (method, variant), grp in grp_rows.groupby(["method", "variant"], sort=False):
            grp = grp.sort_values("tau")
            ax.errorbar(grp["tau"], grp["mIoU"], marker="o", ms=3, capsize=2, lw=1,
                        color="black" if method == "daam" else None, label=f"{method} {variant}",
                        yerr=np.nan_to_num(np.vstack([grp["mIoU"] - grp["ci95_lo"], grp["ci95_hi"] - grp["mIoU"]])))
        ax.set_xlabel("tau (threshold on the min-max normalised heat map)")
        ax.set_ylabel("mIoU (95% CI over prompts)")
        ax.set_title(f"tau sensitivity {label}".strip(), fontsize=9)
        ax.grid(alpha=0.3)
    panels[0][0].legend(fontsize=6)
    return fig


def collect_overlays(samples: list, gen_store: GenerateStore, mask_store: MaskStore, methods: list[Method],
                     ctx: Context, tau: float, n: int = 4, max_side: int = 256) -> dict:
    """Up to n (sample, word) pairs with a reference mask, spread over `samples`: the image (at most
    `max_side` px), the reference mask at that size and every point method's heat map (k-curves left out)."""
    items = []
    for sample in samples[:: max(1, len(samples) // n)]:
        if len(items) == n:
            break
        sample_ctx, masks = load_sample(sample, gen_store, mask_store, ctx)
        word = next((w for w, m in masks.items() if m.mask is not None), None)
        if word is None:
            continue
        maps = {}
        for method in methods:
            if isinstance(method, KCurve):
                continue
            try:
                heat_maps = method.heat_maps(sample_ctx.word_maps[word], word, sample_ctx)
            except RuntimeError:  # a relevance that exists per held-out fold only (oracle): not shown
                continue
            maps.update({f"{method.name} {variant}": heat.numpy() for variant, (_, heat) in heat_maps.items()})
        image = gen_store.image(sample.id)
        image.thumbnail((max_side, max_side))
        ref = PIL.Image.fromarray(masks[word].mask).resize(image.size, PIL.Image.NEAREST)
        items.append({"title": f"{sample.row.id} s{sample.seed}: {word}", "image": np.asarray(image),
                      "ref": np.asarray(ref), "maps": maps})
    return {"tau": tau, "items": items}


def overlay_masks(overlays: dict) -> list[tuple[int, str, np.ndarray, np.ndarray]]:
    """(item index, method label, heat map at the image size, predicted mask) for every overlay cell."""
    cells = []
    for i, item in enumerate(overlays["items"]):
        hw = item["image"].shape[:2]
        for label, heat in item["maps"].items():
            heat = torch.from_numpy(heat)
            big = torch.nn.functional.interpolate(heat[None, None], size=hw, mode="bicubic")[0, 0].numpy()
            cells.append((i, label, big, heat_to_mask(heat, hw, overlays["tau"]).numpy()))
    return cells


def overlay_figure(overlays: dict | None) -> Figure:
    """Grid: per pair the image with the reference mask outline, then each method's heat map and mask at tau."""
    if not overlays or not overlays["items"]:
        fig = Figure(figsize=(4, 2))
        _placeholder(fig.subplots(), "no scored pair with a reference mask to show")
        return fig
    cells = overlay_masks(overlays)
    labels = list(dict.fromkeys(label for _, label, _, _ in cells))
    items = overlays["items"]
    fig = Figure(figsize=(2.2 * (1 + len(labels)), 2.3 * len(items)))
    axes = fig.subplots(len(items), 1 + len(labels), squeeze=False)
    for i, item in enumerate(items):
        axes[i, 0].imshow(item["image"])
        axes[i, 0].contour(item["ref"], levels=[0.5], colors="lime", linewidths=1)
        axes[i, 0].set_title(f"{item['title']}\nreference (green)", fontsize=6)
    for i, label, heat, mask in cells:
        item, j = items[i], 1 + labels.index(label)
        axes[i, j].imshow(item["image"])
        axes[i, j].imshow(heat, cmap="jet", alpha=0.45)
        if mask.any():
            axes[i, j].contour(mask, levels=[0.5], colors="white", linewidths=1)
        axes[i, j].contour(item["ref"], levels=[0.5], colors="lime", linewidths=0.6)
        axes[i, j].set_title(f"{label}\nmask > {overlays['tau']:g} (white)", fontsize=6)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig
