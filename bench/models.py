"""Text-to-image models: real checkpoints by HF id / local path, and tiny seeded random-weight ones.

Every model is wrapped in `T2IModel`, which knows its image size, latent size and heat-map size and
generates a batch of prompts with one seeded generator per sample (so a sample's image does not
depend on its batch neighbours).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bench import ModelUnavailableError
from bench.heads import HeadIndex
from bench.tokenizer import clip_tokenizer


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
            "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]


@dataclass
class T2IModel:
    """A text-to-image pipeline plus the geometry the harness needs."""

    name: str
    pipe: DiffusionPipeline
    height: int
    width: int
    latent_size: tuple[int, int]  # (h, w) of the UNet input
    heatmap_size: int  # side of the common grid head maps are upsampled to (DAAM: 64)
    daam_latent_hw: int  # daam 0.2.0's `latent_hw` for this pipeline (decides its 8x8-map skip)
    device: torch.device
    dtype: torch.dtype
    extra: dict = field(default_factory=dict)

    @property
    def unet(self) -> UNet2DConditionModel:
        return self.pipe.unet

    @property
    def tokenizer(self):
        """The tokenizer whose positions token indices refer to (SDXL's two tokenize identically)."""
        return self.pipe.tokenizer

    def head_index(self) -> HeadIndex:
        return HeadIndex.from_unet(self.unet, self.latent_size)

    def generate(self, prompts: list[str], seeds: list[int], steps: int,
                 guidance_scale: float) -> list[PIL.Image.Image]:
        """One batched pipeline call; sample b's initial noise comes from its own seed."""
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        kwargs = dict(prompt=list(prompts), generator=generators, num_inference_steps=steps,
                      guidance_scale=guidance_scale, output_type="pil")
        if not self.extra.get("fixed_size"):
            kwargs.update(height=self.height, width=self.width)
        return self.pipe(**kwargs).images


def _daam_latent_hw(pipe: DiffusionPipeline) -> int:
    """daam 0.2.0: 4096 if unet.sample_size * vae_scale_factor is 512 or 1024, else 9216."""
    h = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return 4096 if h in (512, 1024) else 9216


def _wrap(name: str, pipe: DiffusionPipeline, height: int, width: int, heatmap_size: int,
          device: torch.device, dtype: torch.dtype) -> T2IModel:
    pipe.set_progress_bar_config(disable=True)
    factor = pipe.vae_scale_factor
    if height % (factor * 8) or width % (factor * 8):
        raise ValueError(f"{name}: height/width must be multiples of {factor * 8}, got {height}x{width}")
    return T2IModel(name, pipe, height, width, (height // factor, width // factor), heatmap_size,
                    _daam_latent_hw(pipe), device, dtype)


def load_pretrained(name: str, kind: str, model_id: str, height: int, width: int, heatmap_size: int = 64,
                    device: str = "auto", dtype: str = "auto", variant: str | None = None,
                    vae_id: str | None = None, local_files_only: bool | None = None) -> T2IModel:
    """Load SDXL (`kind=sdxl`) or SD 1.x (`kind=sd`) by HF id or local path through the normal HF cache."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    cls = {"sdxl": StableDiffusionXLPipeline, "sd": StableDiffusionPipeline}[kind]
    kwargs: dict = dict(torch_dtype=dt, local_files_only=local_files_only, use_safetensors=True)
    if variant and dt == torch.float16:
        kwargs["variant"] = variant
    if kind == "sd":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        if vae_id:
            kwargs["vae"] = AutoencoderKL.from_pretrained(vae_id, torch_dtype=dt, local_files_only=local_files_only)
        pipe = cls.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError) as err:  # huggingface_hub raises OSError subclasses for missing files
        raise ModelUnavailableError(
            f"model '{model_id}' could not be loaded ({type(err).__name__}): it is not in the local Hugging Face "
            f"cache or path and the hub is unreachable; download it where there is network "
            f"(`hf download {model_id}`) or set model.loader.model_id=/path/to/a/local/copy") from None
    return _wrap(name, pipe.to(dev), height, width, heatmap_size, dev, dt)


def build_tiny_sdxl(height: int = 128, width: int = 128, seed: int = 0, heatmap_size: int = 64,
                    device: str = "cpu") -> T2IModel:
    """SDXL architecture in miniature with seeded random weights, built offline in about a second.

    Two text encoders (hidden 32 and 64, concatenated to 96 = cross_attention_dim), text_time added
    conditioning, the real CLIP BPE tokenizers, cross-attention at two map resolutions in down, mid
    and up blocks with 4-8 heads per layer (17 layers, 116 heads). unet.sample_size * vae factor is
    512 so daam's latent-size rule gives a 64x64 heat-map grid, as for SDXL at 1024 px.
    """
    dev = resolve_device(device)

    def text_config(hidden: int) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
                              bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=256, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 8), transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
        cross_attention_dim=96, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=16)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=128)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config(32))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(64))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer("!"), unet=unet,
                                     scheduler=scheduler)
    return _wrap("tiny_sdxl", pipe.to(dev), height, width, heatmap_size, dev, torch.float32)


# Real UNet architectures (configs as published with the checkpoints); used for random-weight models
# of the true compute cost and for HeadIndex checks without downloading weights.
SDXL_UNET_CONFIG = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
    cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816)
SD14_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8, cross_attention_dim=768)
