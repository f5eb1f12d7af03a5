"""Seeded, resumable training of the shapes-world diffusion model on freshly rendered train scenes.

    python -m bench.shapes.train --out data/shapes/model --work /work/shapes_train --minutes 100

Step s trains on train-split scenes s*B .. s*B+B-1; noise, timesteps and caption dropout come from
one seeded torch.Generator saved in the checkpoint. --minutes and --steps are totals over all runs:
rerunning the same command resumes from <work>/checkpoint.pt. The learning rate warms up, then
follows a cosine to 10% over progress = max(step / steps, elapsed / minutes). At the end the EMA
weights are exported with save_shapes_model; --export-only exports the latest checkpoint.
Threads: torch.set_num_threads(OMP_NUM_THREADS, default 1).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from bench.shapes.pipeline import (
    MAX_LENGTH,
    SCHEDULER_CONFIG,
    TEXT_CONFIG,
    UNET_CONFIG,
    ShapesPipeline,
    save_shapes_model,
)
from bench.shapes.world import VOCABULARY, caption, render, split_scene
from bench.tokenizer import clip_tokenizer

SAMPLE_PROMPTS = [
    "a red circle",
    "a blue square",
    "a green triangle",
    "a yellow cross",
    "a white circle and a red square",
    "a blue triangle and a yellow circle",
    "a green cross, a white triangle and a red circle",
    "a yellow square, a blue cross and a green circle",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("data/shapes/model"), help="exported model folder")
    p.add_argument("--work", type=Path, required=True, help="checkpoint / log / sample folder")
    p.add_argument("--minutes", type=float, default=100.0, help="total training wall time over all runs")
    p.add_argument("--steps", type=int, default=1_000_000, help="total optimizer steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200, help="linear warmup steps")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--cfg-dropout", type=float, default=0.1, help="P(caption -> '')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--export-only", action="store_true", help="export the latest checkpoint's EMA and exit")
    return p.parse_args(argv)


def log(work: Path, line: str) -> None:
    """Print and append one line to <work>/train.log."""
    stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
    print(stamped, flush=True)
    with open(work / "train.log", "a") as f:
        f.write(stamped + "\n")


def make_batch(
    step: int, batch: int, generator: torch.Generator, dropout: float
) -> tuple[torch.Tensor, list[str]]:
    """Images (B, 3, 32, 32) in [-1, 1] and captions of train scenes step*B .. step*B+B-1."""
    images, captions = [], []
    for i in range(step * batch, (step + 1) * batch):
        scene = split_scene("train", i)
        image, _ = render(scene)
        images.append(image)
        captions.append(caption(scene)[0])
    drop = torch.rand(batch, generator=generator) < dropout  # (B,)
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, 32, 32)
    return x, captions


def learning_rate(args: argparse.Namespace, step: int, elapsed_s: float) -> float:
    """Linear warmup, then cosine from lr to 0.1 lr over the step / time budget."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, max(step / args.steps, elapsed_s / (60 * args.minutes)))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Trainer:
    """Models, EMA copies, optimizer and RNG, with checkpoint save / load."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        torch.manual_seed(args.seed)
        self.unet = UNet2DConditionModel(**UNET_CONFIG)
        self.text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_text_encoder = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        self.ema_params = list(self.ema_unet.parameters()) + list(self.ema_text_encoder.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=0.01)
        self.generator = torch.Generator().manual_seed(args.seed)
        self.tokenizer = clip_tokenizer()
        alphas_cumprod = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod  # (T,)
        self.sqrt_a = alphas_cumprod.sqrt()
        self.sqrt_1ma = (1 - alphas_cumprod).sqrt()
        self.step = 0
        self.elapsed_s = 0.0
        self.path = args.work / "checkpoint.pt"

    def train_step(self) -> float:
        """One optimizer step on the next batch; returns the loss."""
        args = self.args
        x0, captions = make_batch(self.step, args.batch, self.generator, args.cfg_dropout)  # (B, 3, 32, 32)
        t = torch.randint(0, len(self.sqrt_a), (args.batch,), generator=self.generator)  # (B,)
        noise = torch.randn(x0.shape, generator=self.generator)  # (B, 3, 32, 32)
        xt = self.sqrt_a[t, None, None, None] * x0 + self.sqrt_1ma[t, None, None, None] * noise
        ids = self.tokenizer(
            captions, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt"
        ).input_ids  # (B, 77)
        embeds = self.text_encoder(ids).last_hidden_state  # (B, 77, D)
        pred = self.unet(xt, t, encoder_hidden_states=embeds).sample  # (B, 3, 32, 32)
        loss = F.mse_loss(pred, noise)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(args, self.step, self.elapsed_s)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        decay = min(args.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1 - decay)
        self.step += 1
        return loss.item()

    def save(self) -> None:
        """Atomically write <work>/checkpoint.pt."""
        state = {
            "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
            "ema_text_encoder": self.ema_text_encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "batch": self.args.batch,
            "seed": self.args.seed,
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self) -> bool:
        """Resume from <work>/checkpoint.pt if present; returns whether it was."""
        if not self.path.exists():
            return False
        state = torch.load(self.path, weights_only=True)
        if (state["batch"], state["seed"]) != (self.args.batch, self.args.seed):
            raise ValueError(f"{self.path} was written with batch/seed {state['batch']}/{state['seed']}")
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.ema_unet.load_state_dict(state["ema_unet"])
        self.ema_text_encoder.load_state_dict(state["ema_text_encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step = state["step"]
        self.elapsed_s = state["elapsed_s"]
        return True

    def ema_pipeline(self) -> ShapesPipeline:
        """Pipeline over the EMA weights (shared, not copied)."""
        scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
        return ShapesPipeline(self.ema_unet.eval(), self.ema_text_encoder.eval(), self.tokenizer, scheduler)

    def write_samples(self) -> Path:
        """Grid of EMA samples for SAMPLE_PROMPTS into <work>/samples_<step>.png (4x upscaled)."""
        generators = [torch.Generator().manual_seed(i) for i in range(len(SAMPLE_PROMPTS))]
        images = self.ema_pipeline()(SAMPLE_PROMPTS, generators, num_inference_steps=25, guidance_scale=2.0)
        grid = np.concatenate(list(images), axis=1)  # (32, 8*32, 3)
        path = self.args.work / f"samples_{self.step:06d}.png"
        Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)
        return path

    def export(self) -> None:
        meta = {
            "step": self.step,
            "train_minutes": round(self.elapsed_s / 60, 2),
            "batch": self.args.batch,
            "seed": self.args.seed,
            "ema_decay": self.args.ema_decay,
            "vocabulary": list(VOCABULARY),
        }
        save_shapes_model(self.ema_pipeline(), self.args.out, meta)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.work.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(args)
    resumed = trainer.load()
    if args.export_only:
        if not resumed:
            raise SystemExit(f"no checkpoint at {trainer.path}: train first")
        trainer.export()
        log(args.work, f"exported EMA of step {trainer.step} to {args.out}")
        return
    n_params = sum(p.numel() for p in trainer.params)
    n_unet = sum(p.numel() for p in trainer.unet.parameters())
    state = "resumed at" if resumed else "starting"
    log(args.work, f"{state} step {trainer.step}, {trainer.elapsed_s / 60:.1f} min; "
        f"params {n_params} (unet {n_unet}), threads {torch.get_num_threads()}")
    last_save = last_log = time.time()
    losses: list[float] = []
    step_at_log = trainer.step
    while trainer.step < args.steps and trainer.elapsed_s < 60 * args.minutes:
        t0 = time.time()
        losses.append(trainer.train_step())
        trainer.elapsed_s += time.time() - t0
        if trainer.step % args.log_every == 0:
            now = time.time()
            rate = (trainer.step - step_at_log) / ((now - last_log) / 60)
            lr = trainer.optimizer.param_groups[0]["lr"]
            log(args.work, f"step {trainer.step} loss {np.mean(losses):.4f} lr {lr:.2e} "
                f"{rate:.1f} steps/min elapsed {trainer.elapsed_s / 60:.1f} min")
            losses, last_log, step_at_log = [], now, trainer.step
        if time.time() - last_save > 60 * args.checkpoint_minutes:
            trainer.save()
            log(args.work, f"checkpoint step {trainer.step}; samples {trainer.write_samples()}")
            last_save = time.time()
    trainer.save()
    log(args.work, f"finished at step {trainer.step}; samples {trainer.write_samples()}")
    trainer.export()
    log(args.work, f"exported EMA of step {trainer.step} to {args.out}")


if __name__ == "__main__":
    main()
