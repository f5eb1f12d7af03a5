"""Figures of a run or a merged sweep (PNG, matplotlib's object API, no pyplot state):

- `fig_kcurve.png`: mIoU vs k for every k-curve method (95% CI band over prompts; a random relevance's curve
  drawn as a grey band), the DAAM line with its CI, and the point methods (selective k=...) at their k;
- `fig_groups.png`: mIoU with its CI per (config, method, variant) at the reference tau: the per block /
  resolution group bars of a sweep over `method.blocks` / `method.resolutions`;
- `fig_tau.png`: mIoU vs tau per (config, method, variant);
- `fig_overlays.png`: images with the reference mask and each method's heat map and mask, as the scoring
  stage recorded them (`evaluate.Overlays`, stored as `overlays.npz`).

Figures draw only from stored results (a summary, stored overlays): this module imports no model code.
"""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.cache import write_atomic
from bench.report import config_label, curve_methods, pooled, reference_tau, single_tau_rows

#: overlay outlines: colours no shapes-world object has (its palette: red, green, blue, yellow, white)
REFERENCE_OUTLINE, MASK_OUTLINE = "magenta", "cyan"


def write_figures(summary: pd.DataFrame, out_dir: Path, by: list[str] = (), overlays: dict | None = None) -> list[Path]:
    """Draw the figures this run has data for into `out_dir` (no placeholder files: a figure without data is not
    written, and an older file of that name is removed); returns the paths written."""
    paths = []
    for name, fig in (("kcurve", kcurve_figure(summary, by)), ("groups", groups_figure(summary, by)),
                      ("tau", tau_figure(summary, by)), ("overlays", overlay_figure(overlays))):
        path = Path(out_dir) / f"fig_{name}.png"
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        fig.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
    return paths


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


# colour families: DAAM black, each head-ranking method one hue whose shades are its variants (k), controls grey,
# chance maps earth tones; a method not listed takes the next of OTHER_COLOURS
FAMILIES = {"selective": "Blues", "bottom_k": "Oranges", "kcurve": "Blues", "random_kcurve": "Greys"}
FIXED = {"daam": "black", "centred_disc": "tab:brown", "end_of_text": "dimgrey", "other_word": "tab:olive"}
OTHER_COLOURS = ("tab:green", "tab:red", "tab:purple", "tab:cyan", "tab:pink")


def _colours(labels) -> dict[str, object]:
    """One colour per label ("method" or "method variant"), the same in every panel, from the method's family."""
    labels = list(dict.fromkeys(labels))
    by_method: dict[str, list[str]] = {}
    for label in labels:
        by_method.setdefault(label.split(" ")[0], []).append(label)
    others = iter(OTHER_COLOURS * 4)
    out = {}
    for method, members in by_method.items():
        family = FAMILIES.get(method) or ("Greys" if "random" in method else None)
        if method in FIXED:
            out.update(dict.fromkeys(members, FIXED[method]))
        elif family:
            shades = matplotlib.colormaps[family](np.linspace(0.45, 0.9, len(members)))
            out.update({m: tuple(c) for m, c in zip(members, shades)})
        else:
            out.update(dict.fromkeys(members, next(others)))
    return out


def _legend(fig: Figure, axes: list) -> None:
    """One legend for all panels, right of them (labels from every panel, each once)."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside right upper", fontsize=7)


def kcurve_figure(summary: pd.DataFrame, by: list[str] = ()) -> Figure | None:
    """mIoU vs k at the reference tau, one panel per config: each k-curve with its 95% CI band (a random
    relevance's curve as a grey band), the DAAM line and band, point methods (selective k=...) with CI bars.
    None without a k-curve (method=kcurve): a few points would read as a curve."""
    by = list(by)
    curves = curve_methods(summary, by)
    if not curves:  # method=kcurve scores every k; fig_groups shows the point methods
        return None
    tau = reference_tau(summary["tau"])
    colours = _colours(summary["method"])
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
            ax.axhline(r["mIoU"], color="black", ls=":", lw=1.2, label="DAAM (its heads; band: 95% CI)")
            ax.axhspan(r["ci95_lo"], r["ci95_hi"], color="black", alpha=0.06)
        for method, grp in rows[~rows["method"].isin(curves) & (rows["method"] != "daam")].groupby("method",
                                                                                                    sort=False):
            ax.errorbar(grp["n_heads"], grp["mIoU"], fmt="o", ms=4, capsize=2, color=colours[method], label=method,
                        yerr=np.nan_to_num(np.vstack([grp["mIoU"] - grp["ci95_lo"], grp["ci95_hi"] - grp["mIoU"]])))
        ax.set_xlabel("k (heads averaged)")
        ax.set_title(f"{label} tau={tau:g}".strip(), fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_ylabel("mIoU (95% CI over prompts)")
    _legend(fig, [ax for ax, _, _ in panels])
    return fig


def groups_figure(summary: pd.DataFrame, by: list[str] = ()) -> Figure | None:
    """Horizontal bars: mIoU with its CI per (config, method, variant) at the reference tau (at its own tau for a
    row that has none there: a held-out oracle's calibrated tau); a row that is the same in several configs
    (DAAM, chance maps) once, labelled with the configs it pools; a legend of the method colours."""
    by = list(by)
    tau = reference_tau(summary["tau"])
    rows = single_tau_rows(summary, by)
    rows = rows[~rows["method"].isin(curve_methods(summary, by))]
    if rows.empty:
        return None
    shown = pooled(rows, by)
    labels = [" ".join(p for p in (label, r["method"], r["variant"],
                                   "" if np.isclose(r["tau"], tau) else f"tau={r['tau']:g}") if p)
              for label, r in shown]
    rows = pd.DataFrame([r for _, r in shown])
    fig = Figure(figsize=(7, 1 + 0.32 * len(rows)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))
    err = np.vstack([rows["mIoU"] - rows["ci95_lo"], rows["ci95_hi"] - rows["mIoU"]])
    colours = _colours(rows["method"])
    for method in dict.fromkeys(rows["method"]):
        keep = (rows["method"] == method).to_numpy()
        ax.barh(y[keep], rows["mIoU"][keep], xerr=np.nan_to_num(err[:, keep]), color=colours[method], alpha=0.8,
                capsize=2, label=method)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"mIoU at tau = {tau:g}, else at the tau shown (95% CI over prompts)")
    ax.set_title("per config / block / resolution group")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def tau_figure(summary: pd.DataFrame, by: list[str] = ()) -> Figure | None:
    """mIoU vs tau with CI bars per (method, variant) of the point methods, one panel per config scored at two
    or more taus (a config at one tau, e.g. a held-out oracle at its calibrated tau, has no panel); None when
    no config has two."""
    by = list(by)
    rows = summary[~summary["method"].isin(curve_methods(summary, by))]
    if by:
        rows = rows.groupby(by, sort=False).filter(lambda grp: grp["tau"].nunique() > 1)
    elif rows["tau"].nunique() < 2:
        rows = rows.iloc[:0]
    if rows.empty:
        return None
    fig, panels = _panels(rows, by)
    colours = _colours(summary["method"] + " " + summary["variant"])
    for ax, label, grp_rows in panels:
        for (method, variant), grp in grp_rows.groupby(["method", "variant"], sort=False):
            grp = grp.sort_values("tau")
            ax.errorbar(grp["tau"], grp["mIoU"], marker="o", ms=3, capsize=2, lw=1,
                        color=colours[f"{method} {variant}"], label=f"{method} {variant}",
                        yerr=np.nan_to_num(np.vstack([grp["mIoU"] - grp["ci95_lo"], grp["ci95_hi"] - grp["mIoU"]])))
        ax.set_xlabel("tau (threshold on the min-max normalised heat map)")
        ax.set_ylabel("mIoU (95% CI over prompts)")
        ax.set_title(f"tau sensitivity {label}".strip(), fontsize=9)
        ax.grid(alpha=0.3)
    _legend(fig, [ax for ax, _, _ in panels])
    return fig


OVERLAYS = "overlays.npz"  # a run's overlay maps: plain arrays plus JSON, read with allow_pickle off


def save_overlays(overlays: dict, path: Path) -> None:
    """Write {"items": `evaluate.Overlays.items()`} as an npz: each array under `<item>/<field>` or
    `<item>/<map>/<field>`, the rest (ids, titles, map labels and taus) as JSON in `meta`."""
    arrays, meta = {}, []
    for i, item in enumerate(overlays["items"]):
        arrays[f"{i}/image"], arrays[f"{i}/ref"] = item["image"], item["ref"]  # (h, w, 3), (h, w)
        for j, cell in enumerate(item["maps"].values()):
            arrays[f"{i}/{j}/heat"], arrays[f"{i}/{j}/mask"] = cell["heat"], cell["mask"]  # (s, s), (h, w)
        meta.append({"sample_id": item["sample_id"], "word": item["word"], "title": item["title"],
                     "maps": [[label, float(cell["tau"])] for label, cell in item["maps"].items()]})
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array(json.dumps(meta)), **arrays)
    write_atomic(Path(path), buf.getvalue())


def load_overlays(path: Path) -> dict | None:
    """{"items": [...]} as `save_overlays` wrote it; None when the run stored none."""
    if not Path(path).exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        items = [{"sample_id": m["sample_id"], "word": m["word"], "title": m["title"], "image": data[f"{i}/image"],
                  "ref": data[f"{i}/ref"], "maps": {label: {"heat": data[f"{i}/{j}/heat"],
                                                            "mask": data[f"{i}/{j}/mask"], "tau": tau}
                                                    for j, (label, tau) in enumerate(m["maps"])}}
                 for i, m in enumerate(json.loads(str(data["meta"])))]
    return {"items": items}


def overlay_figure(overlays: dict | None) -> Figure | None:
    """Grid: per pair the image with the reference mask outline, then each method's heat map (min-max normalised,
    as binarised; one colour bar) and its mask at tau; None without a pair to show."""
    if not overlays or not overlays["items"]:
        return None
    items = overlays["items"]
    labels = list(dict.fromkeys(label for item in items for label in item["maps"]))
    fig = Figure(figsize=(2.4 * (1 + len(labels)) + 0.6, 2.6 * len(items)), layout="constrained")
    axes = fig.subplots(len(items), 1 + len(labels), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    heat_image = None
    for i, item in enumerate(items):
        h, w = item["ref"].shape
        extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # pixel centres at 0..w-1, where contour() draws the masks
        axes[i, 0].imshow(item["image"], extent=extent)
        axes[i, 0].contour(item["ref"], levels=[0.5], colors=REFERENCE_OUTLINE, linewidths=1)
        axes[i, 0].set_title(f"{_wrap(item['title'])}\nreference (magenta)", fontsize=6)
        for label, cell in item["maps"].items():
            ax = axes[i, 1 + labels.index(label)]
            heat = cell["heat"] - cell["heat"].min()
            heat = heat / heat.max() if heat.max() > 0 else heat  # (s, s) in [0, 1], what tau thresholds
            ax.imshow(item["image"], extent=extent)
            heat_image = ax.imshow(heat, cmap="jet", alpha=0.45, interpolation="bicubic", extent=extent, vmin=0,
                                   vmax=1)
            if cell["mask"].any():
                ax.contour(cell["mask"], levels=[0.5], colors=MASK_OUTLINE, linewidths=1)
            ax.contour(item["ref"], levels=[0.5], colors=REFERENCE_OUTLINE, linewidths=0.6)
            ax.set_title(f"{_wrap(label)}\nmask > {cell['tau']:g} (cyan)", fontsize=6)
    if heat_image is not None:
        fig.colorbar(heat_image, ax=axes[:, 1:].ravel().tolist(), shrink=0.6,
                     label="heat, min-max normalised (mask: > tau)")
    return fig


def _wrap(label: str, width: int = 24) -> str:
    """A column title broken into lines of about `width` characters, so neighbouring titles do not overlap."""
    return textwrap.fill(label, width, break_long_words=False)
