"""Seeded, resumable training of the shapes-world diffusion model on freshly rendered train scenes, on any device.

    python -m bench.shapes.train --seed 0 --steps 4000 --work .cache/shapes_train/seed_0  # -> data/shapes/models/seed_0
    python -m bench.shapes.train --device cuda --workers 4 --seeds 0 1 2 --out M --work W --steps 1600

Step s trains on train-split scenes s*B .. s*B+B-1; its caption dropout, timesteps and noise come from a
generator seeded by (seed, s), so a step's batch is a pure function of (seed, step, batch) whatever the device,
the number of DataLoader workers rendering it or the resume point. The learning rate warms up, then follows a
cosine to 10% over --steps: the model is a function of the recipe, the seed and --steps alone, never of wall
time. --minutes only time-boxes one invocation: it saves the checkpoint and stops; rerunning the same command
resumes from <work>/checkpoint.pt (tensors saved on the CPU, so a checkpoint written on a GPU resumes on the CPU
and back). After the last step the EMA weights are exported with save_shapes_model; --snapshots N also exports
the EMA at N evenly spaced steps into <work>/snapshots/step_<s> (learning curves); --export-only exports the
latest checkpoint. Several --seeds train at once, one process each, into <out>/seed_<s> and <work>/seed_<s>.

Recipe flags (capacity --channels / --layers-per-block / --heads, --attn-resolutions, --lr / --warmup, --prediction,
--loss-weight, --steps) are saved in the checkpoint and must match on resume. Speed flags (--device, --precision,
--workers, --channels-last, --compile) may change between runs. Threads: torch.set_num_threads(OMP_NUM_THREADS,
default 1).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import CLIPTextConfig, CLIPTextModel

from bench.devices import resolve_device
from bench.shapes.pipeline import SCHEDULER_CONFIG, ShapesPipeline, save_shapes_model, text_config, unet_config
from bench.shapes.world import SHAPES, VOCABULARY, WORLD, World, caption, render, split_scene
from bench.tokenizer import clip_tokenizer

N_SAMPLE_PROMPTS = 8  # sample grids draw the captions of eval scenes 0..7 of the trainer's world
MODELS = Path("data/shapes/models")  # the shipped seeds, seed_<s>
MAX_MODEL_BYTES = 20_000_000  # the exported fp16 model is committed to the repo
#: settings that define the model and its schedule: a resume must not change them
RECIPE = ("batch", "seed", "steps", "image_size", "object_size", "shapes", "text_tokens", "text_encoder", "channels",
          "layers_per_block", "heads", "attn_resolutions", "self_attention", "text_pooling", "lr", "warmup",
          "ema_decay", "cfg_dropout", "prediction", "loss_weight", "snr_gamma", "high_noise")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help=f"exported model folder (default: {MODELS}/seed_<seed>)")
    p.add_argument("--work", type=Path, required=True, help="checkpoint / log / sample folder")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps; the learning-rate schedule spans them")
    p.add_argument("--minutes", type=float, default=float("inf"),
                   help="time box of this invocation: checkpoint and stop (rerun to resume); the schedule ignores it")
    p.add_argument("--snapshots", type=int, default=0, help="export the EMA at this many evenly spaced steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100, help="linear warmup steps")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--cfg-dropout", type=float, default=0.1, help="P(caption -> '')")
    p.add_argument("--prediction", choices=("epsilon", "v_prediction"), default="v_prediction",
                   help="the UNet's target: the noise, or v = sqrt(a) noise - sqrt(1 - a) x0 (Salimans & Ho 2022)")
    p.add_argument("--loss-weight", choices=("uniform", "min_snr", "x0"), default="uniform",
                   help="per-sample MSE weight: uniform; Min-SNR-gamma (Hang et al. 2023): min(SNR, gamma) / SNR "
                        "for epsilon, min(SNR, gamma) / (SNR + 1) for v; x0 (v only): 1 / (SNR + 1), the image-space "
                        "error, so high-noise steps (where layout and shape are decided) weigh as much as "
                        "low-noise ones")
    p.add_argument("--snr-gamma", type=float, default=5.0)
    p.add_argument("--high-noise", type=float, nargs=2, default=[0.0, 0.85], metavar=("SHARE", "START"),
                   help="redraw this share of each batch's timesteps uniform in [START * T, T): more of the steps "
                        "where an object's shape is still undecided (0: uniform timesteps)")
    p.add_argument("--image-size", type=int, default=WORLD.size, help="the world's image side (px)")
    p.add_argument("--object-size", type=float, nargs=2, default=[WORLD.min_size, WORLD.max_size],
                   metavar=("MIN", "MAX"),
                   help="the world's object sides as fractions of the image side")
    p.add_argument("--shapes", nargs="+", default=list(WORLD.shapes), choices=SHAPES, help="the world's shapes")
    p.add_argument("--text-tokens", type=int, default=16,
                   help="caption positions of the text encoder (the longest caption takes 14)")
    p.add_argument("--text-encoder", choices=("train", "frozen_tokens", "frozen"), default="train",
                   help="train: jointly with the UNet; frozen_tokens: its token embeddings keep their seeded random "
                        "values, its layers train; frozen: it keeps its seeded random weights. Trained jointly it let "
                        "the states of bar and pillar collapse together; frozen, its maps stopped localizing colours "
                        "(results/reference/shapes_recipe_study.md)")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 32], help="UNet block widths")
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--heads", type=int, default=4, help="heads per cross-attention layer")
    p.add_argument("--self-attention", choices=("on", "off"), default="off",
                   help="off: the transformer blocks' self-attention adds zero (a cross-attention-only UNet; "
                        "cheaper to train, same diffusers layout)")
    p.add_argument("--text-pooling", choices=("on", "off"), default="off",
                   help="on: an attention-pooled caption embedding joins the timestep embedding (SDXL's pooled "
                        "text path); off: the caption reaches the UNet through cross-attention only")
    p.add_argument("--attn-resolutions", type=int, nargs="+",
                   help="block resolutions (px) with cross-attention; the mid block always has it "
                        "(default: half and a quarter of --image-size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", help="train these seeds at once, one process each")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:1 ...")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="autocast dtype of forward / backward; auto: bf16 on CUDA, fp32 elsewhere (weights stay fp32)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes rendering batches (0: in process)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help="auto: on for CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (off by default: not measured)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--no-samples", action="store_true", help="skip the sample grids at checkpoints")
    p.add_argument("--export-only", action="store_true", help="export the latest checkpoint's EMA and exit")
    args = p.parse_args(argv)
    if args.loss_weight == "x0" and args.prediction != "v_prediction":
        p.error("--loss-weight x0 needs --prediction v_prediction "
                "(for epsilon its 1 / SNR weight diverges at high noise)")
    if args.out is None:  # --seeds: <out>/seed_<s> for each
        args.out = MODELS if args.seeds else MODELS / f"seed_{args.seed}"
    if args.attn_resolutions is None:
        args.attn_resolutions = [args.image_size // 2, args.image_size // 4]
    return args


def log(work: Path, line: str) -> None:
    """Print and append one line to <work>/train.log."""
    stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
    print(stamped, flush=True)
    with open(work / "train.log", "a") as f:
        f.write(stamped + "\n")


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step's random draws: a function of (seed, step) only."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


class SceneBatches(Dataset):
    """Item s = step s's batch: images (B, 3, S, S) in [-1, 1], caption token ids (B, L) with caption dropout
    applied, timesteps (B,) and noise (B, 3, S, S), all from train scenes s*B .. s*B+B-1 of `world` (S = its size)
    and step_generator. Timesteps are uniform; with `high_noise` = (share, start) that share of them is redrawn
    uniform in [start * T, T) (drawn after the noise, so share 0 gives the uniform recipe's batches exactly)."""

    def __init__(self, batch: int, seed: int, dropout: float, n_timesteps: int, first_step: int = 0,
                 world: World = WORLD, text_tokens: int = 16, high_noise: tuple[float, float] = (0.0, 0.85)):
        self.batch, self.seed, self.dropout, self.n_timesteps = batch, seed, dropout, n_timesteps
        self.first_step, self.world, self.text_tokens, self.high_noise = first_step, world, text_tokens, high_noise
        self.tokenizer = clip_tokenizer()
        self.token_ids: dict[str, torch.Tensor] = {}  # caption -> (L,) ids: ~1,700 distinct captions

    def ids(self, text: str) -> torch.Tensor:
        """Token ids (L,) of one caption padded to L positions, tokenised once per process."""
        if text not in self.token_ids:
            ids = self.tokenizer(text, padding="max_length", max_length=self.text_tokens,
                                 return_tensors="pt").input_ids[0]
            if len(ids) > self.text_tokens:
                raise ValueError(f"caption {text!r} has {len(ids)} tokens, over --text-tokens {self.text_tokens}")
            self.token_ids[text] = ids
        return self.token_ids[text]

    def __len__(self) -> int:
        return 2**62 - self.first_step

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        step = self.first_step + index
        images, captions = [], []
        for i in range(step * self.batch, (step + 1) * self.batch):
            scene = split_scene("train", i, self.world)
            images.append(render(scene, self.world.size)[0])
            captions.append(caption(scene)[0])
        generator = step_generator(self.seed, step)
        drop = torch.rand(self.batch, generator=generator) < self.dropout  # (B,)
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        side = self.world.size
        t = torch.randint(0, self.n_timesteps, (self.batch,), generator=generator)  # (B,)
        noise = torch.randn(self.batch, 3, side, side, generator=generator)  # (B, 3, S, S)
        share, start = self.high_noise
        if share > 0:
            high = torch.rand(self.batch, generator=generator) < share  # (B,)
            t_high = torch.randint(int(start * self.n_timesteps), self.n_timesteps, (self.batch,), generator=generator)
            t = torch.where(high, t_high, t)
        return {"x0": torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1,  # (B, 3, S, S)
                "ids": torch.stack([self.ids(c) for c in captions]),  # (B, L)
                "t": t, "noise": noise}


class NoSelfAttention:
    """Processor of a disabled self-attention (attn1): adds nothing to the residual stream. With the layer's output
    projection zero and frozen (`disable_self_attention`), the standard processor computes the same zeros, so the
    exported model needs no custom code."""

    def __call__(self, attn, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def disable_self_attention(unet: UNet2DConditionModel) -> None:
    """Turn every transformer block's self-attention (attn1) into a zero residual: output projection zeroed and
    frozen, the layer skipped while training. Cross-attention (attn2), whose heads the harness reads, is untouched."""
    for name, module in unet.named_modules():
        if name.endswith(".attn1"):
            torch.nn.init.zeros_(module.to_out[0].weight)
            torch.nn.init.zeros_(module.to_out[0].bias)
            module.requires_grad_(False)
            module.set_processor(NoSelfAttention())


def learning_rate(args: argparse.Namespace, step: int) -> float:
    """Linear warmup, then cosine from lr to 0.1 lr over --steps."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, step / args.steps)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def to_cpu(state):
    """A state (nested dicts / lists of tensors) with every tensor moved to the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(v) for v in state)
    return state


class Trainer:
    """Models, EMA copies and optimizer on the chosen device, with device-independent checkpoint save / load."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = resolve_device(args.device)
        cuda = self.device.type == "cuda"
        precision = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.channels_last = args.channels_last == "on" or (args.channels_last == "auto" and cuda)
        self.world = World(args.image_size, *args.object_size, tuple(args.shapes))
        torch.manual_seed(args.seed)
        self.unet = UNet2DConditionModel(**unet_config(tuple(args.channels), tuple(args.attn_resolutions),
                                                       args.layers_per_block, args.heads, self.world.size,
                                                       args.text_pooling == "on"))
        self.text_encoder = CLIPTextModel(CLIPTextConfig(**text_config(args.text_tokens)))
        if args.self_attention == "off":
            disable_self_attention(self.unet)
        n_bytes = 2 * sum(p.numel() for m in (self.unet, self.text_encoder) for p in m.parameters())
        if n_bytes > MAX_MODEL_BYTES:
            raise ValueError(f"this recipe's fp16 model is {n_bytes / 1e6:.1f} MB, over the "
                             f"{MAX_MODEL_BYTES / 1e6:.0f} MB the repo ships: lower --channels or --layers-per-block")
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.unet.to(self.device, memory_format=memory_format)
        self.text_encoder.to(self.device)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_text_encoder = copy.deepcopy(self.text_encoder).requires_grad_(False)
        trained = [(self.unet, self.ema_unet)]
        if args.text_encoder == "frozen":  # its random initialisation, fixed: every word distinct from step 0
            self.text_encoder.requires_grad_(False).eval()
        else:
            trained.append((self.text_encoder, self.ema_text_encoder))
            if args.text_encoder == "frozen_tokens":
                self.text_encoder.get_input_embeddings().requires_grad_(False)
        self.params = [p for module, _ in trained for p in module.parameters()]  # frozen ones get no grad
        self.ema_params = [p for _, ema in trained for p in ema.parameters()]
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=0.01, fused=cuda or None)
        self.forward_unet = torch.compile(self.unet) if args.compile else self.unet
        self.tokenizer = clip_tokenizer()
        alphas_cumprod = self.scheduler().alphas_cumprod  # (T,)
        self.sqrt_a = alphas_cumprod.sqrt().to(self.device)
        self.sqrt_1ma = (1 - alphas_cumprod).sqrt().to(self.device)
        self.snr = (alphas_cumprod / (1 - alphas_cumprod)).to(self.device)  # (T,)
        self.step = 0
        self.elapsed_s = 0.0
        self.path = args.work / "checkpoint.pt"

    def batches(self) -> DataLoader:
        """Batches from the current step on, rendered in `args.workers` processes."""
        data = SceneBatches(self.args.batch, self.args.seed, self.args.cfg_dropout, len(self.sqrt_a), self.step,
                            self.world, self.args.text_tokens, tuple(self.args.high_noise))
        workers = self.args.workers
        return DataLoader(data, batch_size=None, num_workers=workers, pin_memory=self.device.type == "cuda",
                          prefetch_factor=4 if workers else None, persistent_workers=False)

    def train_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimizer step on one item of SceneBatches; returns the loss (a 0-d tensor on the device)."""
        args = self.args
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        t, noise = batch["t"], batch["noise"]  # (B,), (B, 3, S, S)
        xt = self.sqrt_a[t, None, None, None] * batch["x0"] + self.sqrt_1ma[t, None, None, None] * noise
        if self.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            with torch.set_grad_enabled(args.text_encoder != "frozen"):
                embeds = self.text_encoder(batch["ids"]).last_hidden_state  # (B, L, D)
            pred = self.forward_unet(xt, t, encoder_hidden_states=embeds).sample  # (B, 3, S, S)
        if args.prediction == "v_prediction":
            target = self.sqrt_a[t, None, None, None] * noise - self.sqrt_1ma[t, None, None, None] * batch["x0"]
        else:
            target = noise  # (B, 3, S, S)
        per_sample = F.mse_loss(pred.float(), target, reduction="none").mean((1, 2, 3))  # (B,)
        snr = self.snr[t]  # (B,)
        if args.loss_weight == "min_snr":
            per_sample = per_sample * snr.clamp(max=args.snr_gamma) / (snr + 1 if args.prediction == "v_prediction"
                                                                        else snr)
        elif args.loss_weight == "x0":  # |v - v_hat|^2 = (SNR + 1) |x0 - x0_hat|^2
            per_sample = per_sample / (snr + 1)
        loss = per_sample.mean()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(args, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        decay = min(args.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1 - decay)
        self.step += 1
        return loss.detach()

    def save(self) -> None:
        """Atomically write <work>/checkpoint.pt, every tensor on the CPU."""
        state = {
            "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
            "ema_text_encoder": self.ema_text_encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "recipe": {k: getattr(self.args, k) for k in RECIPE},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(to_cpu(state), tmp)
        os.replace(tmp, self.path)

    def load(self) -> bool:
        """Resume from <work>/checkpoint.pt if present (written on any device); returns whether it was."""
        if not self.path.exists():
            return False
        state = torch.load(self.path, weights_only=True, map_location="cpu")
        recipe = {k: getattr(self.args, k) for k in RECIPE}
        changed = {k: (v, recipe[k]) for k, v in state.get("recipe", {}).items() if recipe.get(k) != v}
        if "recipe" not in state or changed:
            raise ValueError(f"{self.path} was written with another recipe {changed or '(an older trainer)'}: "
                             "pass the same settings or a new --work folder")
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.ema_unet.load_state_dict(state["ema_unet"])
        self.ema_text_encoder.load_state_dict(state["ema_text_encoder"])
        self.optimizer.load_state_dict(state["optimizer"])  # moves its state to the parameters' device
        self.step = state["step"]
        self.elapsed_s = state["elapsed_s"]
        return True

    def scheduler(self) -> DDIMScheduler:
        """The sampler of the exported model: SCHEDULER_CONFIG with this recipe's prediction type."""
        return DDIMScheduler(**{**SCHEDULER_CONFIG, "prediction_type": self.args.prediction})

    def ema_pipeline(self) -> ShapesPipeline:
        """Pipeline over fp32 CPU copies of the EMA weights (standard memory layout)."""
        scheduler = self.scheduler()
        unet = copy.deepcopy(self.ema_unet).to("cpu", memory_format=torch.contiguous_format).eval()
        text_encoder = copy.deepcopy(self.ema_text_encoder).to("cpu").eval()
        return ShapesPipeline(unet, text_encoder, self.tokenizer, scheduler)

    def write_samples(self) -> Path:
        """Grid of EMA samples for the first eval captions into <work>/samples_<step>.png (4x upscaled)."""
        prompts = [caption(split_scene("eval", i, self.world))[0] for i in range(N_SAMPLE_PROMPTS)]
        generators = [torch.Generator().manual_seed(i) for i in range(N_SAMPLE_PROMPTS)]
        images = self.ema_pipeline()(prompts, generators, num_inference_steps=25, guidance_scale=2.0)
        grid = np.concatenate(list(images), axis=1)  # (S, 8*S, 3)
        path = self.args.work / f"samples_{self.step:06d}.png"
        Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)
        return path

    def export(self, folder: Path | None = None) -> None:
        """Write the EMA model (save_shapes_model) into `folder` (default --out) with its recipe and step."""
        meta = {
            "step": self.step,
            "train_minutes": round(self.elapsed_s / 60, 2),
            "train_samples": self.step * self.args.batch,
            "device": str(self.device),
            "vocabulary": list(VOCABULARY),
            "world": self.world.as_dict(),
            **{k: getattr(self.args, k) for k in RECIPE},
        }
        save_shapes_model(self.ema_pipeline(), folder or self.args.out, meta)


def launch_seeds(args: argparse.Namespace, argv: list[str]) -> None:
    """One training process per seed of --seeds (into <out>/seed_<s>, <work>/seed_<s>); waits for all."""
    base, skip = [], False
    for a in argv:  # argv without --seeds and its values
        if a == "--seeds":
            skip = True
        elif skip and not a.startswith("--"):
            continue
        else:
            skip = False
            base.append(a)
    procs = []
    for seed in args.seeds:
        cmd = [sys.executable, "-m", "bench.shapes.train", *base, "--seed", str(seed),
               "--out", str(args.out / f"seed_{seed}"), "--work", str(args.work / f"seed_{seed}")]
        procs.append(subprocess.Popen(cmd))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"seed processes exited with {dict(zip(args.seeds, codes))}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.seeds:
        launch_seeds(args, argv)
        return
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
    log(args.work, f"{state} step {trainer.step}, {trainer.elapsed_s / 60:.1f} min; params {n_params} (unet {n_unet}); "
        f"device {trainer.device}, autocast {trainer.autocast_dtype}, channels_last {trainer.channels_last}, "
        f"compile {args.compile}, workers {args.workers}, batch {args.batch}, threads {torch.get_num_threads()}")
    snapshot_steps = {round(args.steps * (i + 1) / args.snapshots) for i in range(args.snapshots)}
    started = last_save = last_log = time.time()
    loss_sum, step_at_log = torch.zeros((), device=trainer.device), trainer.step
    batches = iter(trainer.batches())
    while trainer.step < args.steps and time.time() - started < 60 * args.minutes:
        t0 = time.time()
        loss_sum += trainer.train_step(next(batches))
        trainer.elapsed_s += time.time() - t0
        if trainer.step % args.log_every == 0:
            now = time.time()
            n = trainer.step - step_at_log
            lr = trainer.optimizer.param_groups[0]["lr"]
            log(args.work, f"step {trainer.step} loss {loss_sum.item() / n:.4f} lr {lr:.2e} "
                f"{n * args.batch / (now - last_log):.0f} samples/s elapsed {trainer.elapsed_s / 60:.1f} min")
            loss_sum.zero_()
            last_log, step_at_log = now, trainer.step
        if trainer.step in snapshot_steps:
            trainer.export(args.work / "snapshots" / f"step_{trainer.step:06d}")
        if time.time() - last_save > 60 * args.checkpoint_minutes:
            trainer.save()
            samples = "" if args.no_samples else f"; samples {trainer.write_samples()}"
            log(args.work, f"checkpoint step {trainer.step}{samples}")
            last_save = time.time()
    trainer.save()
    if trainer.step < args.steps:
        log(args.work, f"stopped at step {trainer.step} of {args.steps} (--minutes {args.minutes}): rerun to resume")
        return
    samples = "" if args.no_samples else f"; samples {trainer.write_samples()}"
    log(args.work, f"finished at step {trainer.step} ({trainer.elapsed_s / 60:.1f} min of steps){samples}")
    trainer.export()
    log(args.work, f"exported EMA of step {trainer.step} to {args.out}")

if __name__ == "__main__":
    main()
