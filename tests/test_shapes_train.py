"""Shapes-world trainer: per-step batches, device-independent resumable checkpoints, recipe checks."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader

from bench.shapes.pipeline import unet_config
from bench.shapes.train import SceneBatches, Trainer, main, parse_args
from bench.shapes.world import caption, render, split_scene

TINY = ["--channels", "16", "32", "--attn-resolutions", "16", "--batch", "4", "--warmup", "2", "--device", "cpu"]


def args_for(tmp_path, *extra: str):
    return parse_args([*TINY, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "model"), *extra])


def run_steps(trainer: Trainer, n: int) -> None:
    batches = iter(trainer.batches())
    for _ in range(n):
        trainer.train_step(next(batches))


def test_batch_is_a_function_of_seed_and_step_whatever_the_workers():
    data = SceneBatches(batch=3, seed=5, dropout=0.5, n_timesteps=1000)
    direct = data[2]
    via_workers = next(iter(DataLoader(SceneBatches(3, 5, 0.5, 1000, first_step=2), batch_size=None, num_workers=1)))
    for key in direct:
        assert torch.equal(direct[key], via_workers[key]), key
    scene = split_scene("train", 2 * 3)  # step 2's first scene
    expected = torch.from_numpy(render(scene)[0]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(direct["x0"][0], expected)
    other_seed = SceneBatches(3, 6, 0.5, 1000)[2]
    assert torch.equal(other_seed["x0"], direct["x0"]) and not torch.equal(other_seed["noise"], direct["noise"])
    assert caption(scene)[0]  # the scenes have captions to drop or keep


def test_resume_equals_uninterrupted_training(tmp_path):
    straight = Trainer(args_for(tmp_path / "a"))
    run_steps(straight, 3)
    first = Trainer(args_for(tmp_path / "b"))
    run_steps(first, 2)
    first.save()
    resumed = Trainer(args_for(tmp_path / "b"))
    assert resumed.load() and resumed.step == 2
    run_steps(resumed, 1)
    for a, b in zip(straight.ema_params + straight.params, resumed.ema_params + resumed.params):
        assert torch.equal(a, b)


def test_checkpoint_from_bf16_channels_last_resumes_in_fp32(tmp_path):
    writer = Trainer(args_for(tmp_path, "--precision", "bf16", "--channels-last", "on"))
    assert writer.autocast_dtype == torch.bfloat16 and writer.channels_last
    run_steps(writer, 2)
    writer.save()
    saved = torch.load(writer.path, weights_only=True)
    assert all(t.device.type == "cpu" for t in saved["unet"].values())
    reader = Trainer(args_for(tmp_path, "--precision", "fp32", "--channels-last", "off"))
    assert reader.load() and reader.step == 2 and reader.autocast_dtype is None
    for a, b in zip(writer.params + writer.ema_params, reader.params + reader.ema_params):
        assert torch.equal(a, b)
    state_w, state_r = writer.optimizer.state_dict()["state"], reader.optimizer.state_dict()["state"]
    assert all(torch.equal(state_w[i]["exp_avg_sq"], state_r[i]["exp_avg_sq"]) for i in state_w)
    run_steps(reader, 1)
    assert reader.step == 3


def test_resume_with_another_recipe_is_refused(tmp_path):
    trainer = Trainer(args_for(tmp_path))
    trainer.save()
    with pytest.raises(ValueError, match="another recipe.*lr"):
        Trainer(args_for(tmp_path, "--lr", "0.5")).load()


def test_train_and_export_end_to_end(tmp_path):
    main([*TINY, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "model"), "--steps", "2",
          "--no-samples", "--log-every", "1"])
    meta = json.loads((tmp_path / "model" / "shapes_model.json").read_text())
    assert meta["step"] == 2 and meta["train_samples"] == 8 and meta["channels"] == [16, 32]
    unet = json.loads((tmp_path / "model" / "unet" / "config.json").read_text())
    assert unet["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D"]


def test_unet_config_and_model_size_errors(tmp_path):
    assert unet_config((32, 64, 64), (32, 8))["up_block_types"] == ("CrossAttnUpBlock2D", "UpBlock2D",
                                                                   "CrossAttnUpBlock2D")
    with pytest.raises(ValueError, match="not block resolutions"):
        unet_config((32, 64), (8,))
    with pytest.raises(ValueError, match="over the 20 MB"):
        Trainer(args_for(tmp_path, "--channels", "256", "256", "--layers-per-block", "2"))
