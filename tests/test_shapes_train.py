"""Shapes-world trainer: per-step batches, device-independent resumable checkpoints, recipe checks."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch.utils.data import DataLoader

from bench.shapes.pipeline import load_shapes_pipeline, unet_config
from bench.shapes.train import SceneBatches, Trainer, learning_rate, main, parse_args
from bench.shapes.world import World, caption, load_world, render, split_scene

TINY = ["--channels", "16", "32", "--attn-resolutions", "12", "--batch", "4", "--warmup", "2", "--device", "cpu",
        "--steps", "10"]


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


def test_high_noise_share_redraws_only_the_timesteps():
    """--high-noise: the share of timesteps redrawn from the top of the schedule; scenes, captions and noise stay
    those of the uniform recipe, and share 0 is the uniform recipe's batch exactly."""
    uniform = SceneBatches(64, 5, 0.1, 1000)[3]
    assert torch.equal(SceneBatches(64, 5, 0.1, 1000, high_noise=(0.0, 0.85))[3]["t"], uniform["t"])
    high = SceneBatches(64, 5, 0.1, 1000, high_noise=(1.0, 0.9))[3]
    half = SceneBatches(64, 5, 0.1, 1000, high_noise=(0.5, 0.9))[3]
    for key in ("x0", "ids", "noise"):
        assert torch.equal(high[key], uniform[key]) and torch.equal(half[key], uniform[key]), key
    assert (high["t"] >= 900).all() and (high["t"] < 1000).all()
    redrawn = half["t"] != uniform["t"]
    assert 16 <= redrawn.sum() <= 48 and (half["t"][redrawn] >= 900).all()


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
    main([*TINY, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "model"), "--steps", "4",
          "--no-samples", "--log-every", "1", "--snapshots", "2", "--image-size", "32", "--object-size", "0.3", "0.6",
          "--shapes", "circle", "square", "cross", "--text-tokens", "14", "--attn-resolutions", "16",
          "--self-attention", "on"])
    meta = json.loads((tmp_path / "model" / "shapes_model.json").read_text())
    assert meta["step"] == 4 and meta["train_samples"] == 16 and meta["channels"] == [16, 32]
    assert load_world(tmp_path / "model") == World(32, 0.3, 0.6, ("circle", "square", "cross"))
    unet = json.loads((tmp_path / "model" / "unet" / "config.json").read_text())
    assert unet["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D"] and unet["sample_size"] == 32
    snapshots = sorted(p.name for p in (tmp_path / "work" / "snapshots").iterdir())
    assert snapshots == ["step_000002", "step_000004"]
    assert json.loads((tmp_path / "work" / "snapshots" / "step_000002" / "shapes_model.json").read_text())["step"] == 2
    pipe = load_shapes_pipeline(tmp_path / "model")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.token_ids(["a red circle"]).shape == (1, 14)
    image = pipe(["a red circle"], torch.Generator().manual_seed(0), num_inference_steps=2)
    assert image.shape == (1, 32, 32, 3)


def test_time_box_stops_and_resumes_without_changing_the_schedule(tmp_path):
    args = [*TINY, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "model"), "--no-samples", "--steps", "3"]
    main([*args, "--minutes", "0"])  # stops before the first step: a checkpoint, no model
    assert (tmp_path / "work" / "checkpoint.pt").exists() and not (tmp_path / "model").exists()
    main(args)
    assert json.loads((tmp_path / "model" / "shapes_model.json").read_text())["step"] == 3
    schedule = parse_args([*TINY, "--work", "w", "--steps", "100"])
    assert learning_rate(schedule, 1) == schedule.lr * 2 / 2 and learning_rate(schedule, 100) == pytest.approx(
        0.1 * schedule.lr)  # warmup, then the cosine ends at 10% of lr at --steps, whatever the wall time


@pytest.mark.parametrize("weight", ["uniform", "min_snr", "x0"])
def test_v_prediction_loss_is_zero_for_the_exact_v(tmp_path, monkeypatch, weight):
    trainer = Trainer(args_for(tmp_path, "--prediction", "v_prediction", "--loss-weight", weight))
    batch = SceneBatches(4, 0, 0.0, 1000)[0]
    t = batch["t"]
    exact_v = (trainer.sqrt_a[t, None, None, None] * batch["noise"]
               - trainer.sqrt_1ma[t, None, None, None] * batch["x0"])  # (B, 3, S, S)
    monkeypatch.setattr(trainer, "forward_unet", predicting(trainer, exact_v))
    assert trainer.train_step(batch).item() == pytest.approx(0.0, abs=1e-12)


def test_x0_weight_is_the_image_space_error(tmp_path, monkeypatch):
    """--loss-weight x0: the loss of a v prediction equals the MSE of the x0 it implies."""
    trainer = Trainer(args_for(tmp_path, "--prediction", "v_prediction", "--loss-weight", "x0"))
    batch = SceneBatches(4, 0, 0.0, 1000)[0]
    t, noise, x0 = batch["t"], batch["noise"], batch["x0"]
    a, s = trainer.sqrt_a[t, None, None, None], trainer.sqrt_1ma[t, None, None, None]
    predicted_v = a * noise - s * x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    xt = a * x0 + s * noise
    implied_x0 = a * xt - s * predicted_v  # (B, 3, S, S)
    monkeypatch.setattr(trainer, "forward_unet", predicting(trainer, predicted_v))
    expected = ((implied_x0 - x0) ** 2).mean((1, 2, 3)).mean()
    assert trainer.train_step(batch).item() == pytest.approx(expected.item(), rel=1e-4)
    with pytest.raises(SystemExit):
        args_for(tmp_path, "--prediction", "epsilon", "--loss-weight", "x0")


def predicting(trainer: Trainer, output: torch.Tensor) -> torch.nn.Module:
    """A stand-in UNet returning `output`, with a zero-valued path to the parameters so backward runs."""
    class Fixed(torch.nn.Module):
        def forward(self, *args, **kwargs):
            return type("Out", (), {"sample": output + 0 * sum(p.sum() for p in trainer.unet.parameters())})()

    return Fixed()


def test_frozen_text_encoder_keeps_its_seeded_initialisation(tmp_path):
    frozen = Trainer(args_for(tmp_path / "a", "--text-encoder", "frozen"))
    initial = {k: v.clone() for k, v in frozen.text_encoder.state_dict().items()}
    run_steps(frozen, 2)
    for key, value in frozen.text_encoder.state_dict().items():
        assert torch.equal(value, initial[key]) and torch.equal(frozen.ema_text_encoder.state_dict()[key], value)
    assert not any(p is q for p in frozen.params for q in frozen.text_encoder.parameters())
    trained = Trainer(args_for(tmp_path / "b", "--text-encoder", "train"))
    run_steps(trained, 2)
    changed = [not torch.equal(v, initial[k]) for k, v in trained.text_encoder.state_dict().items()
               if k in initial]
    assert any(changed)  # same seed, same init: only training moved it


def test_unet_config_and_model_size_errors(tmp_path):
    assert unet_config((32, 64, 64), (32, 8))["up_block_types"] == ("CrossAttnUpBlock2D", "UpBlock2D",
                                                                   "CrossAttnUpBlock2D")
    with pytest.raises(ValueError, match="not block resolutions"):
        unet_config((32, 64), (8,))
    pooled = UNet2DConditionModel(**unet_config((16, 32), (12,), size=24, text_pooling=True)).eval()
    x, t = torch.randn(1, 3, 24, 24), torch.tensor([900])
    captions = torch.randn(2, 1, 16, 64).unbind()
    with torch.no_grad():  # the pooled caption reaches the output even where cross-attention adds nothing
        for module in pooled.modules():
            if type(module).__name__ == "Attention" and module.is_cross_attention:
                module.set_processor(ZeroCrossAttention())
        a, b = (pooled(x, t, encoder_hidden_states=c).sample for c in captions)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="over the 20 MB"):
        Trainer(args_for(tmp_path, "--channels", "256", "256", "--layers-per-block", "2"))


class ZeroCrossAttention:
    def __call__(self, attn, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def test_disabled_self_attention_is_a_zero_residual_under_the_standard_processor(tmp_path):
    from diffusers.models.attention_processor import AttnProcessor2_0

    trainer = Trainer(args_for(tmp_path))  # --self-attention off is the default
    run_steps(trainer, 2)
    attn1 = [m for n, m in trainer.unet.named_modules() if n.endswith(".attn1")]
    assert attn1 and all(not p.requires_grad and not p.any() for m in attn1 for p in m.to_out[0].parameters())
    x, t = torch.randn(2, 3, 24, 24), torch.tensor([10, 700])
    embeds = torch.randn(2, 16, 64)
    with torch.no_grad():
        skipped = trainer.unet(x, t, encoder_hidden_states=embeds).sample
        for module in attn1:
            module.set_processor(AttnProcessor2_0())  # what a plain diffusers load of the exported model runs
        standard = trainer.unet(x, t, encoder_hidden_states=embeds).sample
    assert torch.equal(skipped, standard)
