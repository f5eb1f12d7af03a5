"""bench.perf: the full-size SDXL config (structure only), the figures' arithmetic, an end-to-end run on tiny."""

import json
import warnings

import pytest
import torch
from helpers import REPO

from bench.capture import HeadMapCapture
from bench.generate import capture_batch
from bench.perf import (
    check_floors,
    compare,
    compose_config,
    main,
    overhead_pct,
    run_plain,
    throughput_ratio,
    timing_record,
)
from bench.prompts import load_prompt_set, token_positions
from bench.run import build
from bench.samples import make_samples


def test_sdxl_random_builds_on_meta_with_the_real_sizes():
    cfg = compose_config(["model=sdxl_random", "model.loader.device=meta"])
    assert (cfg.model.loader.height, cfg.model.loader.width) == (1024, 1024)
    model = build(cfg.model.loader)
    index = model.head_index()
    assert len(index) == 1300 and len(index.layers) == 70
    assert {res: sum(h.resolution == res for h in index.heads) for res in index.resolutions} == {
        (64, 64): 100, (32, 32): 1200}  # down_blocks.1 + up_blocks.1: 10 layers x 10 heads at 64x64
    te1, te2 = model.pipe.text_encoder.config, model.pipe.text_encoder_2.config
    assert (te1.hidden_size, te1.num_hidden_layers, te1.num_attention_heads) == (768, 12, 12)  # CLIP ViT-L/14
    assert (te2.hidden_size, te2.num_hidden_layers, te2.num_attention_heads, te2.projection_dim) == (1280, 32, 20, 1280)
    unet = model.unet.config
    assert unet.cross_attention_dim == te1.hidden_size + te2.hidden_size  # the two encoders' states concatenated
    assert unet.projection_class_embeddings_input_dim == te2.projection_dim + 6 * unet.addition_time_embed_dim

    def n_params(module):
        return sum(p.numel() for p in module.parameters())

    # published sizes: SDXL UNet 2.567B, CLIP ViT-L text 123.1M, OpenCLIP bigG text 694.7M, SDXL VAE 83.7M
    assert round(n_params(model.unet) / 1e6) == 2567
    assert round(n_params(model.pipe.text_encoder) / 1e5) == 1231
    assert round(n_params(model.pipe.text_encoder_2) / 1e5) == 6947
    assert round(n_params(model.pipe.vae) / 1e5) == 837
    assert model.unet.device.type == "meta" and model.latent_size == (128, 128) and model.daam_latent_hw == 4096


def test_overhead_and_throughput_arithmetic():
    assert overhead_pct(2.0, 2.1) == pytest.approx(5.0)
    assert overhead_pct(4.0, 3.0) == pytest.approx(-25.0)
    assert throughput_ratio(capture_s=8.0, batch_size=4, daam_s=3.0) == pytest.approx((4 / 8.0) / (1 / 3.0))
    with pytest.raises(ValueError):
        overhead_pct(0.0, 1.0)
    with pytest.raises(ValueError):
        throughput_ratio(1.0, 1, 0.0)


def test_compare_and_floors_on_given_timings():
    mib = 2**20
    timings = [
        timing_record("plain", 1, 10, [2.0, 2.2, 1.9], [10 * mib] * 3, {}),
        timing_record("capture", 1, 10, [2.1, 2.05, 2.3], [11 * mib] * 3, {"extra_bytes": mib, "bytes_per_sample": 7}),
        timing_record("plain", 4, 10, [6.0, 6.0, 6.0], [20 * mib] * 3, {}),
        timing_record("capture", 4, 10, [6.6, 6.6, 6.6], [30 * mib] * 3,
                      {"extra_bytes": 4 * mib, "bytes_per_sample": 7}),
        timing_record("daam", 1, 10, [3.0, 3.5, 2.5], [12 * mib] * 3, {"extra_bytes": 5, "bytes_per_sample": 3}),
    ]
    assert timings[0]["median_s"] == 2.0 and timings[0]["images_per_s"] == 0.5 and timings[0]["s_per_step"] == 0.2
    rows = compare(timings)
    assert [r["batch_size"] for r in rows] == [1, 4]
    assert rows[0]["capture_overhead_pct"] == pytest.approx(5.0)  # medians 2.1 vs 2.0
    assert rows[1]["capture_overhead_pct"] == pytest.approx(10.0)
    assert rows[0]["capture_overhead_paired_pct"] == pytest.approx(5.0)  # per run: +5%, -6.8%, +21.1%
    assert rows[1]["throughput_vs_daam"] == pytest.approx((4 / 6.6) / (1 / 3.0), abs=1e-3)
    assert rows[1]["peak_memory_delta_bytes"] == 10 * mib  # larger than the 4 MiB of state, so it counts
    assert rows[1]["capture_extra_gb"] == pytest.approx(10 * mib / 1e9, abs=1e-4)
    floors = {(f["name"], f["batch_size"]): f for f in check_floors(rows, setting_matches=True)}
    assert floors[("capture_overhead_pct", 1)]["met"] and not floors[("capture_overhead_pct", 4)]["met"]
    assert floors[("throughput_vs_daam", 4)]["met"] and floors[("capture_extra_gb", 4)]["met"]
    assert all(f["applies"] for f in floors.values())


def test_perf_end_to_end_on_tiny_writes_every_field(tmp_path, monkeypatch):
    pytest.importorskip("daam", reason="the daam package is a test dependency: run `make setup`")
    monkeypatch.chdir(REPO)
    original_record = HeadMapCapture._record
    result = main(["--steps", "1", "--runs", "2", "--warmup", "0", "--batch-sizes", "1", "2", "--threads", "1",
                   "--profile", "--out", str(tmp_path), "--tag", "test"])
    saved = json.loads((tmp_path / "perf_test.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert "| mode | batch |" in (tmp_path / "perf_test.md").read_text()
    assert HeadMapCapture._record is original_record  # the profiler's labels are removed again

    assert saved["device"]["type"] == "cpu" and saved["device"]["name"] and saved["device"]["threads"] == 1
    assert saved["dtype"] == "float32" and saved["resolution"] == [128, 128] and saved["steps"] == 1
    assert saved["batch_sizes"] == [1, 2] and saved["runs"] == 2 and saved["warmup"] == 0
    assert all(saved["versions"][k] for k in ("torch", "diffusers", "transformers", "daam", "python"))
    by = {(t["mode"], t["batch_size"]): t for t in saved["timings"]}
    assert set(by) == {("plain", 1), ("capture", 1), ("plain", 2), ("capture", 2), ("daam", 1)}
    for (_mode, b), t in by.items():
        assert len(t["seconds"]) == 2 and t["peak_memory_bytes"] is None  # CPU: no accelerator memory
        assert t["images_per_s"] == pytest.approx(b / t["median_s"], rel=1e-3)
        assert t["s_per_step"] == pytest.approx(t["median_s"], rel=1e-3)  # one step
    # bytes per sample, independently: fp16 maps of the first prompt's 2 target tokens at every head's resolution
    index = build(compose_config([]).model.loader).head_index()
    positions = sum(h.resolution[0] * h.resolution[1] for h in index.heads)
    assert saved["words"][0] == ["cat", "sofa"]
    assert by[("capture", 1)]["bytes_per_sample"] == 2 * 2 * positions
    assert by[("capture", 1)]["extra_bytes"] == 4 * 2 * positions  # fp32 accumulators of the same maps
    assert by[("daam", 1)]["extra_bytes"] > by[("capture", 1)]["extra_bytes"]  # daam keeps all 77 tokens
    for row in saved["comparison"]:
        plain, cap = by[("plain", row["batch_size"])], by[("capture", row["batch_size"])]
        assert row["capture_overhead_pct"] == pytest.approx(overhead_pct(plain["median_s"], cap["median_s"]), abs=0.01)
        assert "capture_overhead_paired_pct" in row
        assert row["throughput_vs_daam"] > 0 and row["peak_memory_delta_bytes"] is None
        assert row["capture_extra_bytes"] == cap["extra_bytes"] and row["bytes_per_sample"] == cap["bytes_per_sample"]
    assert {f["name"] for f in saved["floors"]} == {"capture_overhead_pct", "throughput_vs_daam", "capture_extra_gb"}
    assert not any(f["applies"] for f in saved["floors"])  # tiny on CPU is not the 1024 px GPU setting
    prof = saved["profile"]["capture"]
    assert prof["HeadMapCapture._record"]["calls"] == len(index.layers)  # every attn2 layer once per step (1 step)
    assert prof["capture.maps_to_storage"]["calls"] == 1 and prof["top_ops"]
    inside = {op["op"] for op in prof["ops_inside_record"]}
    assert "aten::amax" in inside and "aten::gather" in inside  # the capture's own ops, nothing of the UNet
    assert "aten::_softmax" not in inside  # only the target tokens' probabilities, never the full softmax
    assert not inside & {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::mkldnn_convolution"}


def _syncs_inside_loop(model, run, steps: int) -> list[str]:
    """Synchronising CUDA calls (torch's sync debug mode warns on each) from the start of the first UNet call to
    the end of the last one: the denoising loop, without the text encoders before it or the maps' move after it."""
    done = [0]

    def first(*_args):
        if done[0] == 0:
            torch.cuda.set_sync_debug_mode("warn")

    def last(*_args):
        done[0] += 1
        if done[0] == steps:
            torch.cuda.set_sync_debug_mode("default")

    handles = [model.unet.register_forward_pre_hook(first), model.unet.register_forward_hook(last)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            for handle in handles:
                handle.remove()
    assert done[0] == steps
    return [str(w.message) for w in seen if "synchroniz" in str(w.message).lower()]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_capture_adds_no_stream_syncs_on_cuda(monkeypatch):
    """Between the first and the last UNet call the capture adds no host-device synchronisation (the scheduler's
    own, if any, are in both counts); moving the maps to the host after the loop is allowed."""
    from bench.models import build_tiny_sdxl

    monkeypatch.chdir(REPO)  # the default dataset's path is relative to the checkout
    model = build_tiny_sdxl(device="cuda")
    rows = load_prompt_set(compose_config([]).dataset.path)[:2]
    samples = make_samples(rows, [0], token_positions(model.tokenizer, rows))
    steps, index = 3, model.head_index()
    capture_batch(model, index, samples, "generated", steps, 5.0)  # warm-up: compilation happens outside the count
    plain = _syncs_inside_loop(model, lambda: run_plain(model, samples, steps, 5.0), steps)
    captured = _syncs_inside_loop(model, lambda: capture_batch(model, index, samples, "generated", steps, 5.0), steps)
    assert len(captured) == len(plain), captured
