"""Hydra entry point: `python -m bench [overrides]` (see conf/config.yaml; `--help` for examples).

Light on purpose: `bench.checks.preflight` checks the config, the prompt set, the cache root and the models in
seconds before `bench.run` (torch, diffusers) is imported; `--help` never imports them.
"""

import shutil
import signal
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bench import INCOMPLETE, USER_ERRORS
from bench.checks import preflight

HYDRA_FILES = {".hydra", "__main__.log", INCOMPLETE}  # a run folder's files before the run writes its own


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # a launcher's own handler (submitit) stays
        signal.signal(signal.SIGTERM, _terminated)
    marker = run_dir / INCOMPLETE  # until the run finishes: a kill -9 leaves it, a requeued job's attempt replaces it
    marker.write_text("started, not finished: still running, or killed without a chance to say why\n")
    try:
        preflight(cfg)
        from bench.run import run  # torch and diffusers load here, after every cheap check

        run(cfg, run_dir, job=hydra_cfg.mode == RunMode.MULTIRUN)
        marker.unlink()
    except BaseException as err:
        stopped(run_dir, err, remove=hydra_cfg.mode == RunMode.RUN)
        if isinstance(err, USER_ERRORS):
            raise SystemExit(f"error: {err}") from None
        raise


def _terminated(signum: int, frame) -> None:
    """SIGTERM (kill, a scheduler) ends a run the way Ctrl-C does: through `main`'s clean-up."""
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")


def stopped(run_dir: Path, err: BaseException, remove: bool) -> None:
    """A failed or stopped run's folder: deleted when it holds only Hydra's files (and `remove`), so
    results/runs lists runs with results; otherwise marked INCOMPLETE with the reason, which reports and merges
    refuse. A Slurm job that submitit requeues (time limit, preemption: SystemExit from its signal handler) is
    marked here and cleared when its next attempt finishes."""
    if not run_dir.is_dir():
        return
    if remove and {p.name for p in run_dir.iterdir()} <= HYDRA_FILES:
        shutil.rmtree(run_dir)
    else:
        reason = " ".join(f"{type(err).__name__}: {err}".split())  # one line: the merge quotes it
        (run_dir / INCOMPLETE).write_text(f"stopped before it finished: {reason}\n")


if __name__ == "__main__":
    main()
