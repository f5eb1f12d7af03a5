"""Summaries of the long IoU table: every number is a groupby of it, with n, spread and exclusions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

Z95 = 1.96


def summarise(table: pd.DataFrame, baseline: str = "daam") -> pd.DataFrame:
    """Per (method, variant): mIoU, std of per-seed mIoU, 95% CI over prompts, n, exclusions, paired diff."""
    scored = table[table["excluded"].isna()]
    base = scored[scored["method"] == baseline][["sample_id", "word", "iou"]]
    out = []
    for (method, variant), grp in table.groupby(["method", "variant"], sort=False):
        ok = grp[grp["excluded"].isna()]
        per_prompt = ok.groupby("prompt_id")["iou"].mean()
        per_seed = ok.groupby("seed")["iou"].mean()
        reasons = grp[grp["excluded"].notna()]["excluded"].value_counts()
        row = {
            "method": method, "variant": variant, "n_heads": int(grp["n_heads"].median()),
            "mIoU": ok["iou"].mean(),
            "std_seeds": per_seed.std(ddof=1) if len(per_seed) > 1 else np.nan,
            "ci95_prompts": _ci(per_prompt),
            "n_pairs": len(ok), "n_prompts": len(per_prompt), "n_seeds": len(per_seed),
            "n_excluded": int(reasons.sum()),
            "excluded_reasons": "; ".join(f"{r}: {n}" for r, n in reasons.items()),
        }
        if method != baseline:
            pairs = ok.merge(base, on=["sample_id", "word"], suffixes=("", "_base"))
            diff = pairs["iou"] - pairs["iou_base"]
            per_prompt_diff = diff.groupby(pairs["prompt_id"]).mean()
            row.update({f"diff_vs_{baseline}": diff.mean(), "diff_ci95_prompts": _ci(per_prompt_diff)})
        out.append(row)
    return pd.DataFrame(out)


def _ci(per_prompt: pd.Series) -> float:
    """Half-width of the normal 95% CI of the mean over prompts (1.96 sd / sqrt n)."""
    return Z95 * per_prompt.std(ddof=1) / np.sqrt(len(per_prompt)) if len(per_prompt) > 1 else np.nan


def write_summary(summary: pd.DataFrame, run_dir: Path, header: list[str]) -> str:
    """Write summary.csv and summary.md (header lines first); returns the Markdown."""
    summary.to_csv(run_dir / "summary.csv", index=False)
    md = "\n".join(header) + "\n\n" + summary.to_markdown(index=False, floatfmt=".4f") + "\n"
    (run_dir / "summary.md").write_text(md)
    return md
