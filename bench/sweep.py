"""Multirun merge: every job of a Hydra sweep -> one long table (the job's overrides as columns), one summary
(Markdown, CSV, LaTeX) and one set of figures, in the sweep directory.

`MergeSweep` (hydra.callbacks.merge_sweep in conf/config.yaml) checks every job's config and writes the job list
(`sweep_jobs.json`) before the first job starts, and runs the merge when a multirun ends, counting the jobs
against that list;
`python -m bench.sweep DIR` (`make report DIR=...`) runs it on a finished sweep directory, or re-reports a
single run directory. Overrides in NOT_GROUPED choose which rows a job scores (samples, seeds, taus) and are
already in the rows, so their jobs are pooled, not compared: a `shard=i/n` sweep merges into one table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tqdm import tqdm

from bench import INCOMPLETE, USER_ERRORS
from bench.cache import write_atomic
from bench.checks import preflight
from bench.figures import OVERLAYS, load_overlays, save_overlays, write_figures
from bench.report import COLUMNS, HEADLINE_K, config_label, summarise, write_summary, write_verdict
from bench.store import read_table, write_table

NOT_GROUPED = {"shard", "dataset.seeds", "eval.tau"}
DEFAULT = "(default)"  # a column's value for jobs that did not override that key
MAX_OVERLAY_ITEMS = 4  # (sample, word) pairs in a merged fig_overlays.png
JOBS = "sweep_jobs.json"  # the jobs a sweep launches (each one's overrides), written before the first starts


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


def job_count(path: Path) -> tuple[str, bool]:
    """One line on a sweep's jobs (expected from sweep_jobs.json, finished, failed with why, never finished) and
    whether every expected job finished."""
    expected = json.loads((path / JOBS).read_text()) if (path / JOBS).exists() else None
    finished = {p.name for p in job_dirs(path)}
    failed = {p.parent.name: p.read_text().strip() for p in sorted(path.glob(f"*/{INCOMPLETE}"))}
    common = set.intersection(*map(set, expected)) if expected else set()
    named = [[o for o in job if o not in common] for job in expected or []]  # what tells the jobs apart
    failures = "".join(f" (#{n}{' ' + ' '.join(named[int(n)]) if n.isdigit() and int(n) < len(named) else ''}: "
                       f"{why})" for n, why in failed.items())
    if expected is None:
        return (f"{len(finished)} finished, {len(failed)} failed{failures} (no job list: the sweep wrote no "
                f"{JOBS})"), not failed
    unfinished = [str(n) for n in range(len(expected)) if str(n) not in finished and str(n) not in failed]
    line = (f"{len(expected)} expected, {len(finished)} finished, {len(failed)} failed{failures}, "
            f"{len(unfinished)} never finished" + (f" (#{', #'.join(unfinished)})" if unfinished else ""))
    return line, len(finished) == len(expected)


def report_dir(path: Path, figures: bool = True, partial: bool = False) -> pd.DataFrame:
    """Merge a sweep directory (or re-report one run directory) into scores.csv, summary.* and fig_*.png there;
    a sweep with a job that did not finish is refused unless `partial`."""
    path = Path(path)
    if (path / INCOMPLETE).exists():
        raise ValueError(f"{path}: {(path / INCOMPLETE).read_text().strip()}; rerun it (its cache is kept)")
    jobs_line = None
    if (path / "scores.csv").exists() and not job_dirs(path):
        table, by, jobs = read_table(path), [], [path]
    else:
        jobs_line, complete = job_count(path)
        if not complete and not partial:
            raise ValueError(f"{path}: jobs {jobs_line}: rerun the sweep (finished stages are cached), or merge "
                             "what finished with --partial (make report PARTIAL=1)")
        table, by = merge_jobs(path)
        jobs = job_dirs(path)
        write_table(table, path)
    summary = summarise(table, by=by)
    header = _header(path, jobs, by, table)
    if jobs_line:
        header.append(f"- jobs: {jobs_line}{'' if complete else ' (a partial sweep, merged as asked)'}")
        print(f"jobs: {jobs_line}")
    write_summary(summary, path, header, by)
    overlays = _merged_overlays(jobs, by)
    if overlays is not None:
        save_overlays(overlays, path / OVERLAYS)
    if figures:
        write_figures(summary, path, by, overlays)
    print(write_verdict(summary, path, header[0].lstrip("# "), by))
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
    """Overlay items of all jobs (the first MAX_OVERLAY_ITEMS pairs), with chosen columns: DAAM once, then each
    job's selective map at the headline k (report.HEADLINE_K), labelled by the job's config."""
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
                if len(merged["items"]) == MAX_OVERLAY_ITEMS:
                    continue
                target = {**item, "maps": {}}
                merged["items"].append(target)
                items[item["title"]] = target
            for name in overlay_columns(item["maps"]):
                if name.startswith("daam "):
                    if not any(shown.startswith("daam ") for shown in target["maps"]):
                        target["maps"][name] = item["maps"][name]
                else:
                    target["maps"][f"{label} {name}".strip()] = item["maps"][name]
    return merged


def overlay_columns(maps: dict) -> list[str]:
    """Of one job's overlay maps, those a merged figure shows: DAAM's, and the selective method's at the headline
    k (else its middle k)."""
    selective = [name for name in maps if name.startswith("selective ")]
    chosen = [name for name in maps if name.startswith("daam ")][:1]
    if selective:
        headline = f"selective {HEADLINE_K}"
        chosen.append(headline if headline in selective else selective[len(selective) // 2])
    return chosen


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Each job's overrides, in Hydra's job order: the basic sweeper's split of `hydra.sweeper.params` plus the
    command line's sweep overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def check_jobs(config: DictConfig, jobs: list[list[str]]) -> None:
    """Every job's composed config checked before any job runs: `bench.checks.preflight`, then, when every job
    passes it, the values that depend on the model's heads against its configuration (torch loads here, once:
    `bench.run.build_and_check_heads`); every failing job named in one ValueError."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(config)  # what `${hydra:...}` in a job's config resolves against
    composed = [compose(config_name=config.hydra.job.config_name, overrides=job) for job in jobs]
    failures = {}
    for num, cfg in enumerate(composed):
        try:
            preflight(cfg)
        except USER_ERRORS as err:
            failures[num] = err
    if not failures:  # the cheap checks first: a bad value among them is reported in seconds, without torch
        from bench.run import build_and_check_heads

        for num, cfg in enumerate(composed):
            try:
                build_and_check_heads(cfg)
            except USER_ERRORS as err:
                failures[num] = err
    if failures:
        raise ValueError(f"{len(failures)} of {len(jobs)} jobs would fail, so none was started: " + "; ".join(
            f"job #{num} ({' '.join(jobs[num])}): {err}" for num, err in sorted(failures.items())))


class MergeSweep(Callback):
    """Hydra callback: check every job and record the job list before the first starts; merge the jobs when
    the multirun ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        jobs = sweep_jobs(config)
        try:
            check_jobs(config, jobs)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        path = Path(config.hydra.sweep.dir)
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(path / JOBS, json.dumps(jobs, indent=1).encode())

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        report_dir(Path(config.hydra.sweep.dir))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--partial"]
    if len(args) != 1:
        raise SystemExit("usage: python -m bench.sweep <sweep or run directory> [--partial]")
    try:
        report_dir(Path(args[0]), partial="--partial" in sys.argv[1:])
    except USER_ERRORS as err:
        raise SystemExit(f"error: {err}") from None
