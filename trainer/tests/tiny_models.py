"""Builds tiny random Stable Diffusion models (SD 1.5 and SDXL shapes) as local Diffusers folders.

The configs are the real ones from ``../shared/models`` with the sizes scaled down (few
channels, one layer per block, two text-encoder layers) and the real CLIP tokenizer files, so
the trainer exercises the real classes, config keys and folder layout in seconds on a CPU.
Imports torch/diffusers/transformers; only the torch test uses it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

SHARED_MODELS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "models"))


def _config(*parts: str) -> Dict[str, Any]:
    with open(os.path.join(SHARED_MODELS, *parts), "r", encoding="utf-8") as f:
        cfg = json.load(f)
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _tiny_vae(arch: str):
    from diffusers import AutoencoderKL

    cfg = _config(arch, "vae", "config.json")
    # Four blocks keep the real 8x downsampling (256 px -> 32x32 latents).
    cfg.update(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8, sample_size=256)
    return AutoencoderKL(**cfg)


def _tiny_text_config(arch: str, name: str, hidden: int) -> Dict[str, Any]:
    cfg = _config(arch, name, "config.json")
    cfg.pop("architectures", None)
    cfg.pop("torch_dtype", None)
    cfg.pop("transformers_version", None)
    cfg.pop("model_type", None)
    cfg.update(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2, num_attention_heads=2, projection_dim=hidden)
    return cfg


def build_sd15(folder: str, seed: int = 0) -> str:
    """Writes a tiny SD 1.5-shaped pipeline to ``folder`` and returns it."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    ucfg = _config("sd15", "unet", "config.json")
    ucfg.update(
        block_out_channels=[16, 32],
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
        sample_size=32,
    )
    unet = UNet2DConditionModel(**ucfg)
    te = CLIPTextModel(CLIPTextConfig(**_tiny_text_config("sd15", "text_encoder", 32)))
    tok = CLIPTokenizer.from_pretrained(os.path.join(SHARED_MODELS, "clip-tokenizer"))
    sched = PNDMScheduler.from_config(_config("sd15", "scheduler", "scheduler_config.json"))
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae("sd15"), text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_sdxl(folder: str, seed: int = 0) -> str:
    """Writes a tiny SDXL-shaped pipeline (two text encoders, text_time embedding) to ``folder``."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    hidden1, hidden2, time_dim = 16, 32, 8
    ucfg = _config("sdxl-base", "unet", "config.json")
    ucfg.update(
        block_out_channels=[16, 32],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        layers_per_block=1,
        transformer_layers_per_block=[1, 1],
        attention_head_dim=[2, 2],
        cross_attention_dim=hidden1 + hidden2,
        addition_time_embed_dim=time_dim,
        # pooled text embeds of the second encoder + 6 Fourier-embedded time ids.
        projection_class_embeddings_input_dim=hidden2 + 6 * time_dim,
        norm_num_groups=8,
        sample_size=32,
    )
    unet = UNet2DConditionModel(**ucfg)
    te1 = CLIPTextModel(CLIPTextConfig(**_tiny_text_config("sdxl-base", "text_encoder", hidden1)))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_tiny_text_config("sdxl-base", "text_encoder_2", hidden2)))
    tok = CLIPTokenizer.from_pretrained(os.path.join(SHARED_MODELS, "clip-tokenizer"))
    sched = EulerDiscreteScheduler.from_config(_config("sdxl-base", "scheduler", "scheduler_config.json"))
    pipe = StableDiffusionXLPipeline(vae=_tiny_vae("sdxl-base"), text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=sched)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
