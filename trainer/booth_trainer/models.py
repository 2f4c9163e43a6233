"""Loading the base model's parts and encoding prompts and images (torch, diffusers, transformers).

The parts are loaded one by one (tokenizer(s), text encoder(s), VAE, UNet, noise scheduler)
rather than as a pipeline, so that each can get its own dtype and device: modules that are
trained in some stage stay in float32 (the optimizer's master weights; autocast runs the
matmuls in half precision), modules that are never trained are cast to the half-precision
weight dtype to save memory. The training noise scheduler is a ``DDPMScheduler`` built from the
base model's scheduler config, so ``alphas_cumprod`` and ``prediction_type`` are the model's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from .errors import TrainerError
from .progress import log


@dataclass
class Components:
    """The parts of a base model.

    :ivar arch: ``sd1``, ``sd2``, ``sdxl`` (UNet families), ``flux`` or ``sd3`` (flow families).
    :ivar tokenizers: one per text encoder: ``CLIPTokenizer`` (SD1/SD2), two (SDXL), CLIP + T5
        (FLUX.1), CLIP-L + CLIP-G + T5 (SD 3.5).
    :ivar text_encoders: the text encoders in the same order; the flow families replace them by
        None once every prompt's embeddings are computed (T5-XXL alone is 9 GiB).
    :ivar vae: ``AutoencoderKL`` (4 latent channels, or 16 for FLUX.1 and SD 3.5).
    :ivar denoiser: ``UNet2DConditionModel``, ``FluxTransformer2DModel`` or ``SD3Transformer2DModel``.
    :ivar noise_scheduler: ``DDPMScheduler`` with the base model's betas (UNet families) or the
        model's ``FlowMatchEulerDiscreteScheduler`` (flow families; its config gives the shift).
    :ivar prediction_type: ``epsilon`` or ``v_prediction`` (UNet), ``flow`` (velocity ``eps - x0``).
    """

    arch: str
    tokenizers: List[Any]
    text_encoders: List[Any]
    vae: Any
    denoiser: Any
    noise_scheduler: Any
    prediction_type: str
    token_cache: Dict[Tuple[int, str], torch.Tensor] = field(default_factory=dict)

    @property
    def unet(self) -> Any:
        """The denoiser of a UNet family (the name the SD pipelines use)."""
        return self.denoiser

    @property
    def is_sdxl(self) -> bool:
        """True for SDXL (two text encoders, pooled embeddings, time ids)."""
        return self.arch == "sdxl"

    @property
    def is_flow(self) -> bool:
        """True for FLUX.1 and SD 3.5 (transformer trained by flow matching)."""
        return self.arch in ("flux", "sd3")

    @property
    def denoiser_name(self) -> str:
        """Component name of the denoiser: ``unet`` or ``transformer`` (resume-state key prefix)."""
        return "transformer" if self.is_flow else "unet"

    @property
    def te_names(self) -> List[str]:
        """Component names of the text encoders (``text_encoder``, ``text_encoder_2``, ``text_encoder_3``)."""
        return ["text_encoder", "text_encoder_2", "text_encoder_3"][: len(self.text_encoders)]

    def latent_scale(self) -> Tuple[float, Optional[float]]:
        """``(scaling_factor, shift_factor)`` of the VAE (SD: 0.18215, SDXL: 0.13025; no shift)."""
        cfg = self.vae.config
        return float(cfg.scaling_factor), (float(cfg.shift_factor) if getattr(cfg, "shift_factor", None) is not None else None)


def _source_kwargs(name: str, revision: Optional[str]) -> Dict[str, Any]:
    # A revision only means something for a Hub id; local folders ignore it.
    return {"revision": revision} if revision and not os.path.isdir(name) else {}


def load_components(spec: Dict[str, Any]) -> Components:
    """Loads every part of a UNet-family base model (SD 1.x/2.x/SDXL) in float32 on the CPU
    (the flow families load through :func:`.flow_models.load_flow_components`).

    :param spec: the validated job spec (``base``).
    :returns: the components; ``prediction_type`` from ``base.predictionType`` or else the
        scheduler config.
    :raises TrainerError: kind ``environment`` naming ``base.model``/``base.vae`` when loading fails.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    base = spec["base"]
    model = base["model"]
    arch = base["architecture"]
    kw = _source_kwargs(model, base.get("revision"))
    try:
        tokenizers = [CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw)]
        text_encoders = [CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **kw)]
        if arch == "sdxl":
            tokenizers.append(CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2", **kw))
            text_encoders.append(CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder_2", **kw))
        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", **kw)
        noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler", **kw)
    except (OSError, ValueError, EnvironmentError) as e:
        raise TrainerError("environment", f"base.model {model!r} could not be loaded as a {arch} Diffusers model: {e}") from e
    try:
        if base.get("vae"):
            vae = AutoencoderKL.from_pretrained(base["vae"], **_source_kwargs(base["vae"], None))
        else:
            vae = AutoencoderKL.from_pretrained(model, subfolder="vae", **kw)
    except (OSError, ValueError) as e:
        raise TrainerError("environment", f"the VAE of {base.get('vae') or model!r} could not be loaded: {e}") from e
    if arch == "sdxl" and getattr(unet.config, "addition_embed_type", None) != "text_time":
        raise TrainerError("spec", f"base.architecture is sdxl but {model!r} has no SDXL UNet (addition_embed_type is not text_time)")
    if arch != "sdxl" and getattr(unet.config, "addition_embed_type", None) == "text_time":
        raise TrainerError("spec", f"base.architecture is {arch} but {model!r} looks like SDXL; set base.architecture to sdxl")
    prediction = base.get("predictionType") or getattr(noise_scheduler.config, "prediction_type", "epsilon") or "epsilon"
    if prediction not in ("epsilon", "v_prediction"):
        raise TrainerError("spec", f"the base model predicts {prediction!r}; the trainer supports epsilon and v_prediction (base.predictionType)")
    if prediction != getattr(noise_scheduler.config, "prediction_type", None):
        noise_scheduler.register_to_config(prediction_type=prediction)
    for m in [unet, vae, *text_encoders]:
        m.requires_grad_(False)
    return Components(arch=arch, tokenizers=tokenizers, text_encoders=text_encoders, vae=vae, denoiser=unet, noise_scheduler=noise_scheduler, prediction_type=prediction)


def attention_backends(denoiser: Any) -> List[str]:
    """Names of the attention processors the denoiser uses (``AttnProcessor2_0`` is SDPA)."""
    return sorted({type(p).__name__ for p in denoiser.attn_processors.values()})


def token_ids(comps: Components, captions: List[str], device: torch.device) -> List[torch.Tensor]:
    """Token ids per tokenizer, shape (B, 77), padded to ``model_max_length`` and truncated.

    Each caption is tokenized once and cached.
    """
    out = []
    for ti, tok in enumerate(comps.tokenizers):
        rows = []
        for c in captions:
            key = (ti, c)
            ids = comps.token_cache.get(key)
            if ids is None:
                ids = tok(c, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids[0]
                comps.token_cache[key] = ids
            rows.append(ids)
        out.append(torch.stack(rows).to(device))
    return out


def encode_text(comps: Components, ids: List[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Text conditioning for the UNet.

    SD 1.x/2.x: the text encoder's last hidden state, (B, 77, 768|1024). SDXL (Podell et al.
    2023, sec. 2.1): the penultimate hidden states of both encoders concatenated on the feature
    axis, (B, 77, 768+1280), and the pooled, projected output of the second encoder
    (``text_embeds``), (B, 1280).
    """
    if not comps.is_sdxl:
        return comps.text_encoders[0](ids[0], return_dict=True).last_hidden_state, None
    o1 = comps.text_encoders[0](ids[0], output_hidden_states=True, return_dict=True)
    o2 = comps.text_encoders[1](ids[1], output_hidden_states=True, return_dict=True)
    hidden = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2].to(o1.hidden_states[-2].dtype)], dim=-1)
    return hidden, o2.text_embeds


def sdxl_time_ids(orig_hw: Tuple[int, int], crop_tl: Tuple[int, int], target_hw: Tuple[int, int]) -> List[float]:
    """SDXL micro-conditioning (Podell et al. 2023, sec. 2.2): ``[orig_h, orig_w, crop_top,
    crop_left, target_h, target_w]`` in pixels; the UNet embeds each with a Fourier feature
    (``add_time_ids``)."""
    return [float(orig_hw[0]), float(orig_hw[1]), float(crop_tl[0]), float(crop_tl[1]), float(target_hw[0]), float(target_hw[1])]


def load_image(path: str, resolution: int) -> Tuple[torch.Tensor, Tuple[int, int], Tuple[int, int]]:
    """Decodes an image, resizes its short side to ``resolution`` and center-crops a square.

    :returns: ``(pixels, (orig_h, orig_w), (crop_top, crop_left))``; pixels are (3, R, R) float32
        in [-1, 1]; the crop offsets are in the resized image (as SDXL's crop conditioning).
    :raises OSError/ValueError: when the file cannot be decoded (callers report it).
    """
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im = im.convert("RGB")
    w, h = im.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    im = im.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), (h, w), (top, left)


def check_lora_targets(denoiser: Any) -> None:
    """Raises when the denoiser has none of the attention projections LoRA targets."""
    names = {n.rsplit(".", 1)[-1] for n, _ in denoiser.named_modules()}
    if not {"to_q", "to_k", "to_v"} & names:
        raise TrainerError("spec", f"the {type(denoiser).__name__} has no attention projections (to_q/to_k/to_v) to put LoRA adapters on")


#: UNet attention projections (self- and cross-attention), the layers DreamBooth LoRA trains.
UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
#: ``attention-mlp`` for the UNet adds the transformer blocks' feed-forward projections (GEGLU in, out).
UNET_LORA_TARGETS_MLP = UNET_LORA_TARGETS + ["ff.net.0.proj", "ff.net.2"]
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def add_lora(module: Any, rank: int, alpha: float, dropout: float, targets: Any) -> None:
    """Injects a LoRA adapter named ``default`` (Hu et al. 2021; update scaled by alpha / rank).

    Works for diffusers models and transformers models alike (both have ``add_adapter``). The
    adapter parameters are made float32 (they are the trained master weights).

    :param targets: module-name suffixes, or one regular expression that must match a module's
        whole name (peft's two forms of ``target_modules``).
    """
    from peft import LoraConfig

    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights=True, target_modules=targets)
    module.add_adapter(cfg)
    for p in module.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    log(f"LoRA rank {rank} alpha {alpha} on {type(module).__name__}: {sum(p.numel() for p in module.parameters() if p.requires_grad):,} trainable parameters")
