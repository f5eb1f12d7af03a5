"""Text-to-image models: real checkpoints by HF id / local path, and tiny seeded random-weight ones.

Every model is wrapped in `T2IModel`, which knows its image size, latent size and heat-map size and
generates a batch of prompts with one seeded generator per sample (so a sample's image does not
depend on its batch neighbours).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
from hydra.utils import get_method
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bench import ModelUnavailableError
from bench.checks import hub_offline
from bench.devices import resolve_device, resolve_dtype
from bench.heads import HeadIndex
from bench.tokenizer import clip_tokenizer

UnetLayout = Callable[[Mapping[str, Any]], tuple[dict, tuple[int, int]]]


def describes_heads(layout: UnetLayout) -> Callable:
    """Decorator of a model loader: `layout(loader config)` gives its UNet config and latent (h, w) without
    loading weights, which `head_index_from_config` turns into the model's heads."""
    def attach(build: Callable) -> Callable:
        build.unet_layout = layout
        return build
    return attach


def _latent_hw(loader: Mapping[str, Any], vae_config: Mapping[str, Any]) -> tuple[int, int]:
    """Latent (h, w) of the loader's image size under a VAE with this config."""
    factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    return int(loader["height"]) // factor, int(loader["width"]) // factor


def _shapes_layout(loader: Mapping[str, Any]) -> tuple[dict, tuple[int, int]]:
    config = UNet2DConditionModel.load_config(Path(loader["path"]) / "unet")
    return config, (config["sample_size"], config["sample_size"])  # pixel space: latent = image


def _pretrained_layout(loader: Mapping[str, Any]) -> tuple[dict, tuple[int, int]]:
    model_id, vae_id = str(loader["model_id"]), loader.get("vae_id")
    local_only = hub_offline(loader.get("local_files_only"))
    try:
        config = UNet2DConditionModel.load_config(model_id, subfolder="unet", local_files_only=local_only)
        vae = (AutoencoderKL.load_config(vae_id, local_files_only=local_only) if vae_id else
               AutoencoderKL.load_config(model_id, subfolder="vae", local_files_only=local_only))
    except (OSError, ValueError) as err:
        raise unavailable(str(vae_id or model_id), err) from None
    return config, _latent_hw(loader, vae)


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
    fingerprint: str = ""  # hash of local weights that can change under the same path (part of cache keys)

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
        output = self.pipe(**kwargs)
        return output.images if hasattr(output, "images") else output  # the shapes pipeline returns the list

    # --- image mode: condition on a caption, denoise a given image's noised versions -----------------------
    def condition(self, prompts: list[str]) -> dict:
        """UNet keyword arguments for the conditional pass of `prompts` (no CFG)."""
        pipe, dev = self.pipe, self.device
        if isinstance(pipe, StableDiffusionXLPipeline):
            embeds, _, pooled, _ = pipe.encode_prompt(list(prompts), device=dev, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            proj_dim = pipe.text_encoder_2.config.projection_dim
            time_ids = pipe._get_add_time_ids((self.height, self.width), (0, 0), (self.height, self.width),
                                              dtype=embeds.dtype, text_encoder_projection_dim=proj_dim)
            time_ids = time_ids.to(dev).repeat(len(prompts), 1)  # (B, 6)
            return {"encoder_hidden_states": embeds, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
        if isinstance(pipe, StableDiffusionPipeline):
            embeds, _ = pipe.encode_prompt(list(prompts), dev, 1, False)
            return {"encoder_hidden_states": embeds}
        return {"encoder_hidden_states": pipe.encode_prompt(list(prompts)).to(dev, self.dtype)}

    def encode_images(self, images: list[PIL.Image.Image]) -> torch.Tensor:
        """Clean latents x0 (B, C, h, w) of RGB images of the model's size (pixels in [-1, 1] without a VAE)."""
        for im in images:
            if im.size != (self.width, self.height):
                raise ValueError(f"image mode needs {self.width}x{self.height} images for {self.name}, got {im.size}")
        pixels = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32)) for im in images])
        pixels = (pixels.permute(0, 3, 1, 2) / 127.5 - 1).to(self.device)  # (B, 3, H, W) in [-1, 1]
        vae = getattr(self.pipe, "vae", None)
        if vae is None:
            return pixels.to(self.dtype)
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mean  # (B, C, h, w)
        return (latents * vae.config.scaling_factor).to(self.dtype)

    def image_passes(self, images: list[PIL.Image.Image], prompts: list[str], seeds: list[int], steps: int) -> None:
        """Noise each image to every sampling timestep (seeded) and run one conditional UNet pass per timestep.

        Used inside a HeadMapCapture: the maps then describe the given image, not a generated one.
        """
        x0 = self.encode_images(images)  # (B, C, h, w)
        cond = self.condition(prompts)
        scheduler = copy.deepcopy(self.pipe.scheduler)
        scheduler.set_timesteps(steps, device=self.device)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        for t in scheduler.timesteps:
            noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators])  # (B, C, h, w)
            x_t = scheduler.add_noise(x0, noise.to(x0.device, x0.dtype), t.repeat(len(images)))
            if hasattr(scheduler, "_init_step_index"):  # samplers that scale inputs by the step's sigma
                scheduler._step_index = None
                scheduler._init_step_index(t)
            self.unet(scheduler.scale_model_input(x_t, t), t, **cond)


@describes_heads(_shapes_layout)
def load_shapes(path: str, heatmap_size: int = 32, device: str = "cpu") -> T2IModel:
    """The shapes-world model the project trains (`make train-shapes`): pixel-space diffusion, the image side is
    its UNet's sample_size.

    daam_latent_hw is the image's side squared, so daam's factor rule keeps every map (factors 2 and 4)."""
    from bench.shapes.pipeline import load_shapes_pipeline

    dev = resolve_device(device)
    pipe = load_shapes_pipeline(path, device=str(dev))
    pipe.set_progress_bar_config(disable=True)
    side = pipe.unet.config.sample_size
    weights = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(path).rglob("*.safetensors"))))
    return T2IModel("shapes", pipe, side, side, (side, side), heatmap_size, side * side, dev, torch.float32,
                    {"fixed_size": True}, fingerprint=weights.hexdigest()[:16])


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


@describes_heads(_pretrained_layout)
def load_pretrained(name: str, kind: str, model_id: str, height: int, width: int, heatmap_size: int = 64,
                    device: str = "auto", dtype: str = "auto", variant: str | None = None,
                    vae_id: str | None = None, local_files_only: bool | None = None) -> T2IModel:
    """Load SDXL (`kind=sdxl`) or SD 1.x (`kind=sd`) by HF id or local path through the normal HF cache."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    local_files_only = hub_offline(local_files_only)
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
        raise unavailable(model_id, err) from None
    return _wrap(name, pipe.to(dev), height, width, heatmap_size, dev, dt)


def unavailable(model_id: str, err: BaseException) -> ModelUnavailableError:
    """The one-line error for a model that is neither cached nor reachable."""
    return ModelUnavailableError(
        f"model '{model_id}' could not be loaded ({type(err).__name__}): it is not in the local Hugging Face "
        f"cache or path and the hub is unreachable; download it where there is network "
        f"(`hf download {model_id}`) or set model.loader.model_id=/path/to/a/local/copy")


def _sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL base 1.0's scheduler configuration."""
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing="leading")


@describes_heads(lambda loader: (TINY_UNET_CONFIG, _latent_hw(loader, TINY_VAE_CONFIG)))
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
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config(32))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(64))
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer("!"), unet=unet,
                                     scheduler=_sdxl_scheduler())
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
# tiny_sdxl: SDXL's UNet layout in miniature (widths, heads and depths cut; the same block types and conditioning)
TINY_UNET_CONFIG = {**SDXL_UNET_CONFIG, "sample_size": 256, "block_out_channels": (32, 64, 64),
                    "attention_head_dim": (2, 4, 8), "transformer_layers_per_block": (1, 1, 2),
                    "cross_attention_dim": 96, "addition_time_embed_dim": 8,
                    "projection_class_embeddings_input_dim": 32 + 6 * 8, "norm_num_groups": 16}
TINY_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                       down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                       layers_per_block=1, norm_num_groups=8, sample_size=128)
SD14_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8, cross_attention_dim=768)
# SDXL base 1.0's VAE and text encoders as published: CLIP ViT-L/14 text (hidden 768, 12 layers) and OpenCLIP
# ViT-bigG/14 text (hidden 1280, 32 layers, projection 1280); their hidden states concatenate to the UNet's 2048.
SDXL_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
    norm_num_groups=32, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT_CONFIGS = (
    dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
         hidden_act="quick_gelu"),
    dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280,
         hidden_act="gelu"),
)


@describes_heads(lambda loader: (SDXL_UNET_CONFIG, _latent_hw(loader, SDXL_VAE_CONFIG)))
def build_sdxl_random(height: int = 1024, width: int = 1024, seed: int = 0, heatmap_size: int = 64,
                      device: str = "auto", dtype: str = "auto") -> T2IModel:
    """SDXL base 1.0 at full size (UNet, VAE, both text encoders) with seeded random weights, no download.

    Its compute cost and its 1,300 heads are the real model's; its images are noise. For performance runs.
    Modules are created directly on `device` (on a GPU in seconds; on CPU about 30 s and 10 GiB in fp32) and
    cast to `dtype` (auto: fp16 on CUDA, fp32 elsewhere). `device="meta"` builds the structure only.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)

    def create(offset: int, factory):
        torch.manual_seed(seed + offset)
        with dev:  # parameters are allocated and randomly initialised on the target device
            module = factory()
        return module if dt == torch.float32 else module.to(dt)

    text = [CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                           pad_token_id=49407, **config) for config in SDXL_TEXT_CONFIGS]
    unet = create(0, lambda: UNet2DConditionModel(**SDXL_UNET_CONFIG))
    vae = create(1, lambda: AutoencoderKL(**SDXL_VAE_CONFIG))
    text_encoder = create(2, lambda: CLIPTextModel(text[0]))
    text_encoder_2 = create(3, lambda: CLIPTextModelWithProjection(text[1]))
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer("!"), unet=unet,
                                     scheduler=_sdxl_scheduler())
    return _wrap("sdxl_random", pipe, height, width, heatmap_size, dev, dt)


def head_index_from_config(loader: Mapping[str, Any]) -> HeadIndex | None:
    """The HeadIndex of the model `loader` (a model.loader config) builds, from configurations alone: the UNet
    is built on the meta device, no weights are read, so values checked against the heads fail before the
    model loads. None for a loader that does not describe its heads (`describes_heads`): its values are checked
    right after it loads."""
    try:
        build = get_method(str(loader.get("_target_", "")))
    except (ImportError, ValueError, AttributeError):
        return None
    layout = getattr(build, "unet_layout", None)
    if layout is None:
        return None
    config, latent_hw = layout(loader)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    return HeadIndex.from_unet(unet, latent_hw)
