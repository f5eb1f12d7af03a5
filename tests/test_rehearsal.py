"""bench.rehearsal: the sweep projection's arithmetic and the report merged from whatever phases have finished."""

import json

import pytest

from bench.rehearsal import SWEEP, project_sweep, record_phase, report

PIPELINE = {"images": 32, "steps": 20, "seconds_per_image": {"build": 1.25, "generate_capture": 2.0, "segment": 0.5,
                                                             "evaluate_report": 1.0},
            "stage_seconds": {"build": 40.0, "generate_capture": 64.0, "segment": 16.0, "evaluate_report": 32.0},
            "stored_bytes_per_image": {"generate": 5_000_000, "segment": 20_000}, "run_outputs_bytes": 3_200_000}


def test_projection_from_pipeline_rates_scales_generation_by_steps():
    proj = project_sweep(PIPELINE, None)
    images = SWEEP["prompts"] * SWEEP["seeds"]
    assert images == 900 and SWEEP["jobs"] == 12
    assert proj["seconds"] == {"generate_capture": round(900 * 2.0 * 50 / 20), "segment": 450,
                               "evaluate_report": 12 * 900, "build": 12 * 40}
    assert proj["total_hours"] == pytest.approx((4500 + 450 + 10800 + 480) / 3600, abs=0.01)
    assert proj["disk_bytes"] == {"generate": 900 * 5_000_000, "segment": 900 * 20_000,
                                  "run_outputs": 12 * 900 * 100_000}


def test_projection_prefers_perf_at_batch_4_and_50_steps():
    perf50 = {"timings": [{"mode": "plain", "batch_size": 4, "median_s": 9.0},
                          {"mode": "capture", "batch_size": 4, "median_s": 10.0}]}
    proj = project_sweep(PIPELINE, perf50)
    assert proj["seconds"]["generate_capture"] == 900 * 10.0 / 4 and "perf" in proj["generate_rate_from"]


def test_report_keeps_finished_phases_when_others_failed(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    record_phase(work, "gpu_tests", "failed (exit 1)", 12.0)
    first = report(work, out, "h200", 470)
    assert first["phases"]["gpu_tests"]["status"] == "failed (exit 1)"
    assert first["phases"]["pipeline"]["status"] == "not run" and first["projection"] is None
    record_phase(work, "pipeline", "ok", 100.0, result={**PIPELINE, "overrides": [], "batch_size": 4,
                                                        "segmenter": "x", "wall_s": 152.0,
                                                        "peak_memory_bytes": None, "maps_bytes_per_sample": 1})
    saved = json.loads((out / "gpu_rehearsal_h200.json").read_text())
    assert saved["phases"]["pipeline"]["status"] == "not run"  # files change only when report runs
    second = report(work, out, "h200", 470)
    assert second["phases"]["gpu_tests"]["status"] == "failed (exit 1)" and second["projection"]["total_gb"] > 0
    assert second["total_s"] == 112.0 and second["stage_seconds"]["segment"] == 16.0
    assert "Projected `make bench EXP=paper_sdxl_sweep`" in (out / "gpu_rehearsal_h200.md").read_text()
