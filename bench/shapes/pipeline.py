"""Small pixel-space text-to-image diffusion model of the shapes world, as a diffusers pipeline.

UNet2DConditionModel on the world's RGB images in [-1, 1] (side = `unet.config.sample_size`) with cross-attention
at the block resolutions the recipe names, a small CLIPTextModel over the real CLIP BPE tokenizer (captions padded
to its `max_position_embeddings`), cosine betas; sampling with DDIM (epsilon or v prediction, as trained).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from bench.tokenizer import clip_tokenizer

TEXT_DIM = 64
NUM_HEADS = 4


def unet_config(channels: tuple[int, ...] = (32, 64, 64), attn_resolutions: tuple[int, ...] = (16, 8),
                layers_per_block: int = 1, heads: int = NUM_HEADS, size: int = 32,
                text_pooling: bool = False) -> dict:
    """UNet2DConditionModel config for `size` px images: one block per entry of `channels` (block i works at
    size / 2**i px); a block has cross-attention when its resolution is in `attn_resolutions`; the mid block
    always does. `text_pooling` adds an attention-pooled caption embedding to the timestep embedding (diffusers'
    addition_embed_type "text"), so every ResNet block is conditioned on the whole caption, as SDXL's pooled text
    embedding conditions it; the word-level path stays cross-attention."""
    sides = [size // 2**i for i in range(len(channels))]
    unknown = sorted(set(attn_resolutions) - set(sides))
    if unknown:
        raise ValueError(f"attention resolutions {unknown} are not block resolutions {sides}: pick from those")
    attn = [side in attn_resolutions for side in sides]
    return {
        "sample_size": size,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        "block_out_channels": tuple(channels),
        "layers_per_block": layers_per_block,
        "attention_head_dim": heads,  # diffusers reads this as the number of heads (issue #2011)
        "cross_attention_dim": TEXT_DIM,
        "norm_num_groups": 16,
        **({"addition_embed_type": "text", "addition_embed_type_num_heads": heads} if text_pooling else {}),
    }


def text_config(tokens: int = 77) -> dict:
    """CLIPTextConfig of the text encoder; captions are padded to `tokens` positions (start and end included)."""
    return {
        "vocab_size": 49408,
        "hidden_size": TEXT_DIM,
        "intermediate_size": 4 * TEXT_DIM,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": tokens,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }

SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": True,
    "timestep_spacing": "trailing",
}


class ShapesPipeline(DiffusionPipeline):
    """Text-to-image sampler with classifier-free guidance, laid out like the diffusers SD pipelines."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """Token ids (B, L) of prompts padded to the text encoder's L positions; a longer prompt is refused."""
        length = self.text_encoder.config.max_position_embeddings
        ids = self.tokenizer(prompts, padding="max_length", max_length=length, truncation=False,
                             return_tensors="pt").input_ids  # (B, L)
        if ids.shape[1] > length:
            raise ValueError(f"a prompt of {ids.shape[1]} tokens exceeds this model's {length}: shorten it")
        return ids

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Text encoder last hidden states (B, L, D) of prompts padded to the encoder's L positions."""
        ids = self.token_ids(prompts)  # (B, L)
        return self.text_encoder(ids.to(self.text_encoder.device)).last_hidden_state

    @torch.no_grad()
    def __call__(
        self,
        prompt: list[str],
        generator: list[torch.Generator] | torch.Generator | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        output_type: str = "np",
    ) -> np.ndarray | list[Image.Image]:
        """Images for the prompts: uint8 (B, 32, 32, 3) for output_type 'np', else a PIL list.

        With guidance_scale > 1 the UNet batch is cat([uncond, cond]) (uncond = the empty prompt).
        """
        if isinstance(prompt, str):
            prompt = [prompt]
        batch = len(prompt)
        cond = self.encode_prompt(prompt)  # (B, L, D)
        do_cfg = guidance_scale > 1
        if do_cfg:
            uncond = self.encode_prompt([""] * batch)  # (B, L, D)
            embeds = torch.cat([uncond, cond])  # (2B, L, D)
        else:
            embeds = cond
        device, dtype = self.unet.device, self.unet.dtype
        embeds = embeds.to(dtype)
        side = self.unet.config.sample_size
        shape = (batch, self.unet.config.in_channels, side, side)
        x = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # (B, 3, H, W)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.scheduler.timesteps:
            model_in = torch.cat([x, x]) if do_cfg else x  # (2B or B, 3, H, W)
            eps = self.unet(model_in, t, encoder_hidden_states=embeds).sample
            if do_cfg:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)  # (B, 3, H, W)
            x = self.scheduler.step(eps, t, x).prev_sample
        images = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, 3, H, W)
        images = images.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
        if output_type == "np":
            return images
        if output_type == "pil":
            return [Image.fromarray(im) for im in images]
        raise ValueError(f"output_type must be 'np' or 'pil', got {output_type!r}")


def build_shapes_pipeline(seed: int = 0) -> ShapesPipeline:
    """Randomly initialised pipeline (fp32, CPU) from the module configs."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config())
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config()))
    return ShapesPipeline(unet, text_encoder, clip_tokenizer(), DDIMScheduler(**SCHEDULER_CONFIG))


def save_shapes_model(pipe: ShapesPipeline, folder: str | Path, meta: dict | None = None) -> None:
    """Write unet/ and text_encoder/ as fp16 safetensors, scheduler/ and shapes_model.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # .half(): ModelMixin.to(dtype) logs a spurious keep-in-fp32 warning
    copy.deepcopy(pipe.unet).half().save_pretrained(folder / "unet", safe_serialization=True)
    copy.deepcopy(pipe.text_encoder).half().save_pretrained(folder / "text_encoder", safe_serialization=True)
    pipe.scheduler.save_pretrained(folder / "scheduler")
    (folder / "shapes_model.json").write_text(json.dumps(meta or {}, indent=2) + "\n")


def load_shapes_pipeline(
    folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> ShapesPipeline:
    """Load a model written by save_shapes_model, cast to dtype on device."""
    folder = Path(folder)
    if not (folder / "shapes_model.json").exists():
        raise FileNotFoundError(f"no shapes model at {folder}: run `make train-shapes` to train one")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype)
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    pipe = ShapesPipeline(unet.eval(), text_encoder.eval(), clip_tokenizer(), scheduler)
    return pipe.to(device)
