"""Rendering images with the model being trained: sample images and prior-preservation class images.

A pipeline is assembled from the in-memory components (no second copy of the weights) with a
``DPMSolverMultistepScheduler`` built from the training scheduler's config (so it has the
model's betas and prediction type) — good images in 20–30 steps. Rendering runs under
``torch.random.fork_rng`` with explicit per-image CPU generators (``seed + index``), so it never
disturbs the training RNG streams (exact resume) and gives the same image for the same seed on
any device.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

from .models import Components

#: ``render(prompts, seeds, resolution, steps, guidance, negative) -> PIL images``.
Renderer = Callable[[List[str], List[int], int, int, float, Optional[str]], List[Any]]


def renderer(comps: Components, flow_embeds: Optional[Dict[str, Dict[str, torch.Tensor]]] = None) -> Renderer:
    """A render function over the in-memory components of any family (the flow families take
    their prompts' precomputed embeddings, :mod:`.flow_models`)."""
    if comps.is_flow:
        from . import flow_models

        fpipe = flow_models.build_pipeline(comps)
        embeds = flow_embeds or {}
        return lambda prompts, seeds, res, steps, guidance, negative: flow_models.render(fpipe, comps, embeds, prompts, seeds, res, steps, guidance, negative)
    pipe = build_pipeline(comps)
    return lambda prompts, seeds, res, steps, guidance, negative: render(pipe, prompts, seeds, res, steps, guidance, negative)


def build_pipeline(comps: Components) -> Any:
    """A ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` over ``comps``."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = DPMSolverMultistepScheduler.from_config(comps.noise_scheduler.config)
    if comps.is_sdxl:
        pipe = StableDiffusionXLPipeline(
            vae=comps.vae,
            text_encoder=comps.text_encoders[0],
            text_encoder_2=comps.text_encoders[1],
            tokenizer=comps.tokenizers[0],
            tokenizer_2=comps.tokenizers[1],
            unet=comps.unet,
            scheduler=scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=comps.vae,
            text_encoder=comps.text_encoders[0],
            tokenizer=comps.tokenizers[0],
            unet=comps.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def rendering(comps: Components, device: torch.device, autocast: Callable[[], Any]) -> Iterator[None]:
    """Eval mode, no grad, autocast and a forked RNG; the previous train/eval modes come back after."""
    modules = [comps.denoiser, comps.vae, *[te for te in comps.text_encoders if te is not None]]
    modes = [m.training for m in modules]
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        for m in modules:
            m.eval()
        with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast():
            yield
    finally:
        for m, was in zip(modules, modes):
            m.train(was)


def render(pipe: Any, prompts: List[str], seeds: List[int], resolution: int, steps: int, guidance: float, negative: Optional[str]) -> List[Any]:
    """Renders one image per prompt with a CPU generator per image; returns PIL images."""
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    out = pipe(
        prompt=prompts,
        negative_prompt=[negative] * len(prompts) if negative else None,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=gens,
        height=resolution,
        width=resolution,
        output_type="pil",
    )
    return list(out.images)


def save_png(image: Any, path: str) -> None:
    """Saves a PIL image through a temporary file so a reader never sees half a PNG."""
    tmp = path + ".tmp"
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
