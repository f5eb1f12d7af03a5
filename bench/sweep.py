"""Multirun merge: every job of a Hydra sweep -> one long table (the job's overrides as columns), one summary
(Markdown, CSV, LaTeX) and one set of figures, in the sweep directory.

`MergeSweep` runs it when a multirun ends (hydra.callbacks.merge_sweep in conf/config.yaml);
`python -m bench.sweep DIR` (`make report DIR=...`) runs it on a finished sweep directory, or re-reports a
single run directory. Overrides in NOT_GROUPED choose which rows a job scores (samples, seeds, taus) and are
already in the rows, so their jobs are pooled, not compared: a `shard=i/n` sweep merges into one table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tqdm import tqdm

from bench import INCOMPLETE, USER_ERRORS
from bench.figures import OVERLAYS, load_overlays, save_overlays, write_figures
from bench.report import COLUMNS, compact, config_label, summarise, write_summary
from bench.store import read_table, write_table

NOT_GROUPED = {"shard", "dataset.seeds", "eval.tau"}
DEFAULT = "(default)"  # a column's value for jobs that did not override that key
MAX_OVERLAY_MAPS = 8


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep (those with a scores.csv and not marked INCOMPLETE), in job order."""
    jobs = [p for p in Path(sweep_dir).iterdir()
            if p.is_dir() and (p / "scores.csv").exists() and not (p / INCOMPLETE).exists()]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def job_overrides(job_dir: Path) -> dict[str, str]:
    """A job's command-line overrides (`.hydra/overrides.yaml`) as {column: value}; a key that is also a
    long-table column (a config group such as `method`) is named `<key>_override`."""
    path = job_dir / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) if path.exists() else []
    pairs = [(k.lstrip("+~"), v) for k, _, v in (item.partition("=") for item in items or [])]
    return {f"{k}_override" if k in COLUMNS or k in ("draw", "fold") else k: v for k, v in pairs}


def merge_jobs(sweep_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """All jobs' long tables with their overrides as leading columns, and the config columns to group by
    (overrides whose value differs between jobs, minus NOT_GROUPED). Exact duplicate rows (e.g. the same
    tau scored by two jobs) are dropped."""
    jobs = job_dirs(sweep_dir)
    for stopped in sorted(Path(sweep_dir).glob(f"*/{INCOMPLETE}")):
        print(f"warning: {stopped.parent}: {stopped.read_text().strip()}; not merged", file=sys.stderr)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no job folder with a scores.csv (is the sweep finished?)")
    overrides = [job_overrides(j) for j in jobs]
    keys = list(dict.fromkeys(k for o in overrides for k in o))
    tables = []
    for job, over in zip(tqdm(jobs, desc="merge jobs", unit="job"), overrides):
        table = read_table(job)
        for i, key in enumerate(keys):
            table.insert(i, key, over.get(key, DEFAULT))
        tables.append(table)
    merged = pd.concat(tables, ignore_index=True)
    by = [k for k in keys if k not in NOT_GROUPED and len({o.get(k, DEFAULT) for o in overrides}) > 1]
    row_keys = by + ["sample_id", "word", "method", "variant", "tau"] + [c for c in ("draw", "fold") if c in merged]
    return merged.drop_duplicates(row_keys), by


def report_dir(path: Path, figures: bool = True) -> pd.DataFrame:
    """Merge a sweep directory (or re-report one run directory) into scores.csv, summary.* and fig_*.png there."""
    path = Path(path)
    if (path / INCOMPLETE).exists():
        raise ValueError(f"{path}: {(path / INCOMPLETE).read_text().strip()}; rerun it (its cache is kept)")
    if (path / "scores.csv").exists() and not job_dirs(path):
        table, by, jobs = read_table(path), [], [path]
    else:
        table, by = merge_jobs(path)
        jobs = job_dirs(path)
        write_table(table, path)
    summary = summarise(table, by=by)
    write_summary(summary, path, _header(path, jobs, by, table), by)
    overlays = _merged_overlays(jobs, by)
    if overlays is not None:
        save_overlays(overlays, path / OVERLAYS)
    if figures:
        write_figures(summary, path, by, overlays)
    print(compact(summary, by, where=path))
    return summary


def _header(path: Path, jobs: list[Path], by: list[str], table: pd.DataFrame) -> list[str]:
    """The lines all jobs' headers share, then what the sweep varied."""
    headers = [json.loads((j / "header.json").read_text()) for j in jobs if (j / "header.json").exists()]
    common = [line for line in headers[0] if all(line in h for h in headers[1:])] if headers else [f"# {path.name}"]
    if len(jobs) == 1 and jobs[0] == path:
        return common
    keys = list(table.columns[: table.columns.get_loc("sample_id")])
    values = {k: sorted(table[k].astype(str).unique()) for k in keys}
    fixed = [f"{k}={v[0]}" for k, v in values.items() if len(v) == 1]
    pooled = [f"{k} in {v}" for k, v in values.items() if len(v) > 1 and k not in by]
    return common + [f"- sweep: {path.name}, {len(jobs)} jobs; compared (summary rows per value): "
                     f"{'; '.join(f'{k} in {values[k]}' for k in by) or 'nothing'}",
                     f"- pooled (jobs scored other rows of one setting): {'; '.join(pooled) or 'nothing'}",
                     f"- every job: {' '.join(fixed) or 'no override'}; job headers: <job>/summary.md"]


def _merged_overlays(jobs: list[Path], by: list[str]) -> dict | None:
    """Overlay items of all jobs, maps labelled by their job's config (identical maps, e.g. DAAM's, kept once)."""
    merged: dict | None = None
    for job in jobs:
        data = load_overlays(job / OVERLAYS)
        if data is None:
            continue
        label = config_label(pd.Series(job_overrides(job)).reindex(by).fillna(DEFAULT), by)
        if merged is None:
            merged = {"items": []}
        items = {item["title"]: item for item in merged["items"]}
        for item in data["items"]:
            target = items.get(item["title"])
            if target is None:
                if len(merged["items"]) == 4:
                    continue
                target = {**item, "maps": {}}
                merged["items"].append(target)
                items[item["title"]] = target
            budget = max(1, MAX_OVERLAY_MAPS // len(jobs))  # every job's config gets columns
            for name, cell in item["maps"].items():
                if budget and not any(np.array_equal(cell["heat"], other["heat"]) for other in target["maps"].values()):
                    target["maps"][f"{label} {name}".strip()] = cell
                    budget -= 1
    return merged


class MergeSweep(Callback):
    """Hydra callback: merge the sweep's jobs when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        report_dir(Path(config.hydra.sweep.dir))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m bench.sweep <sweep or run directory>")
    try:
        report_dir(Path(sys.argv[1]))
    except USER_ERRORS as err:
        raise SystemExit(f"error: {err}") from None
