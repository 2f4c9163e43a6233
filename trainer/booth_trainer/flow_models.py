"""The transformer families trained by flow matching: FLUX.1 [dev]/[schnell] and SD 3.5 (torch).

Loading, prompt encoding, LoRA target layers, sampling pipelines and the training loss of the
two families; the shared flow-matching math is :mod:`.flow`.

**FLUX.1** (Black Forest Labs 2024; the Diffusers layout of ``black-forest-labs/FLUX.1-dev``):
``FluxTransformer2DModel`` (19 double-stream and 38 single-stream blocks, 3072 wide), CLIP ViT-L
(``CLIPTextModel``: only its pooled output, 768) and T5-XXL (``T5EncoderModel``: the last hidden
state, 4096 wide, up to 512 tokens for [dev] and 256 for [schnell]) text encoders, a 16-channel
VAE whose latents are ``(z - shift_factor) * scaling_factor`` (0.1159, 0.3611). The transformer
takes 2x2-packed latents with image and text position ids, the noise level ``sigma`` as its
timestep (it multiplies by 1000 itself) and, for the guidance-distilled [dev], a guidance value
embedded like the timestep (``guidance_embeds`` in its config).

**SD 3.5** (Stability AI 2024; ``stabilityai/stable-diffusion-3.5-medium``/``-large``):
``SD3Transformer2DModel`` (MMDiT; 2x2 patches inside the model), three text encoders: CLIP-L and
CLIP-G (``CLIPTextModelWithProjection``: penultimate hidden states, 768 + 1280 wide, concatenated
and zero-padded to 4096; their projected pooled outputs concatenated, 2048) and T5-XXL (last
hidden state); the prompt sequence is the 77 CLIP tokens followed by the T5 tokens (as the
SD3 pipeline builds it; Esser et al. 2024, sec. 4 and Fig. 2). The timestep is ``sigma * 1000``.
A 16-channel VAE with ``scaling_factor`` 1.5305 and ``shift_factor`` 0.0609.

Text encoders are frozen in both families: every distinct prompt (captions, the class prompt,
sample prompts, the negative prompt) is encoded once and the encoders are dropped, and the
embeddings are cached on disk so a resumed run need not load T5 at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import torch

from .errors import TrainerError
from .models import Components, _source_kwargs
from .progress import log

#: FLUX.1 LoRA layers. ``attention``: every attention projection of the double-stream blocks
#: (image and text streams) and of the single-stream blocks. ``attention-mlp`` adds the
#: feed-forward projections of the double-stream blocks and the single-stream blocks' fused
#: ``proj_mlp`` and ``proj_out`` (the single-stream block has no separate attention output).
FLUX_LORA_TARGETS = {
    "attention": r"(transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v))",
    "attention-mlp": r"(transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))"
    r"|single_transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v)|proj_mlp|proj_out))",
}
#: SD 3.5 LoRA layers: the joint blocks' attention projections (``attn``, and ``attn2``, the extra
#: self-attention of 3.5 Medium's first blocks), plus their feed-forward projections for
#: ``attention-mlp``.
SD3_LORA_TARGETS = {
    "attention": r"transformer_blocks\.\d+\.attn2?\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)",
    "attention-mlp": r"transformer_blocks\.\d+\.(attn2?\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))",
}


def lora_targets(arch: str, which: str) -> str:
    """The peft ``target_modules`` regular expression (matched against whole module names)."""
    table = FLUX_LORA_TARGETS if arch == "flux" else SD3_LORA_TARGETS
    return table[which]


def max_sequence_length(spec: Dict[str, Any], comps_or_config: Any = None) -> int:
    """T5 tokens per prompt: ``flow.maxSequenceLength``, else 512 for FLUX.1 [dev] (guidance
    embeds), 256 for [schnell] and SD 3.5 (the reference pipelines' defaults)."""
    flow = spec.get("flow") or {}
    if flow.get("maxSequenceLength"):
        return int(flow["maxSequenceLength"])
    if spec["base"]["architecture"] == "flux":
        cfg = getattr(comps_or_config, "config", comps_or_config)
        guidance = getattr(cfg, "guidance_embeds", None) if cfg is not None else None
        return 512 if guidance in (None, True) else 256
    return 256


def load_flow_components(spec: Dict[str, Any], half: torch.dtype, with_text_encoders: bool = True, denoiser_dtype: Optional[torch.dtype] = None) -> Components:
    """Loads a FLUX.1 or SD 3.5 Diffusers folder (or Hub id) on the CPU, straight in the dtypes
    training uses (a float32 detour of FLUX.1's 12 B transformer would take 48 GB of host memory).

    :param half: dtype of the frozen parts (bf16/fp16; float32 on the CPU).
    :param with_text_encoders: False leaves the text encoders out (cached embeddings).
    :param denoiser_dtype: dtype of the transformer; float32 when it is fully fine-tuned (the
        optimizer's master weights), else ``half``.
    :raises TrainerError: ``environment`` naming ``base.model`` when a part cannot be loaded, or
        ``spec`` when the folder holds another family.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTokenizer, T5TokenizerFast

    base = spec["base"]
    model, arch = base["model"], base["architecture"]
    kw = _source_kwargs(model, base.get("revision"))
    tokenizers: List[Any] = []
    encoders: List[Any] = []
    try:
        if arch == "flux":
            from diffusers import FluxTransformer2DModel
            from transformers import CLIPTextModel, T5EncoderModel

            denoiser = FluxTransformer2DModel.from_pretrained(model, subfolder="transformer", torch_dtype=denoiser_dtype or half, **kw)
            tokenizers = [CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw), T5TokenizerFast.from_pretrained(model, subfolder="tokenizer_2", **kw)]
            if with_text_encoders:
                encoders = [
                    CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=half, **kw),
                    T5EncoderModel.from_pretrained(model, subfolder="text_encoder_2", torch_dtype=half, **kw),
                ]
        else:
            from diffusers import SD3Transformer2DModel
            from transformers import CLIPTextModelWithProjection, T5EncoderModel

            denoiser = SD3Transformer2DModel.from_pretrained(model, subfolder="transformer", torch_dtype=denoiser_dtype or half, **kw)
            tokenizers = [
                CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw),
                CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2", **kw),
                T5TokenizerFast.from_pretrained(model, subfolder="tokenizer_3", **kw),
            ]
            if with_text_encoders:
                encoders = [
                    CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder", torch_dtype=half, **kw),
                    CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder_2", torch_dtype=half, **kw),
                    T5EncoderModel.from_pretrained(model, subfolder="text_encoder_3", torch_dtype=half, **kw),
                ]
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model, subfolder="scheduler", **kw)
    except (OSError, ValueError, EnvironmentError) as e:
        raise TrainerError("environment", f"base.model {model!r} could not be loaded as a {arch} Diffusers model: {e}") from e
    try:
        if base.get("vae"):
            vae = AutoencoderKL.from_pretrained(base["vae"], **_source_kwargs(base["vae"], None))
        else:
            vae = AutoencoderKL.from_pretrained(model, subfolder="vae", **kw)
    except (OSError, ValueError) as e:
        raise TrainerError("environment", f"the VAE of {base.get('vae') or model!r} could not be loaded: {e}") from e
    if int(getattr(vae.config, "latent_channels", 4)) != 16:
        raise TrainerError("spec", f"{model!r} has a {vae.config.latent_channels}-channel VAE; FLUX.1 and SD 3.5 use 16 channels (is base.architecture right?)")
    for m in [denoiser, vae, *encoders]:
        m.requires_grad_(False)
    if not with_text_encoders:
        encoders = [None] * len(tokenizers)
    return Components(arch=arch, tokenizers=tokenizers, text_encoders=encoders, vae=vae, denoiser=denoiser, noise_scheduler=scheduler, prediction_type="flow")


def _tokens(tok: Any, prompts: Sequence[str], length: int, device: torch.device) -> torch.Tensor:
    return tok(list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids.to(device)


def encode_prompts(comps: Components, prompts: Sequence[str], device: torch.device, t5_length: int) -> Dict[str, torch.Tensor]:
    """Text conditioning of the flow families for a batch of prompts (no grad; caller's autocast).

    :returns: ``hidden`` (B, L, 4096) and ``pooled`` (B, 768) for FLUX.1 (L = ``t5_length``);
        ``hidden`` (B, 77 + L, 4096) and ``pooled`` (B, 2048) for SD 3.5.
    :raises TrainerError: ``internal`` when the text encoders were already freed.
    """
    if any(te is None for te in comps.text_encoders):
        raise TrainerError("internal", "a prompt must be encoded after the text encoders were freed; every prompt is encoded before training")
    if comps.arch == "flux":
        clip, t5 = comps.text_encoders
        pooled = clip(_tokens(comps.tokenizers[0], prompts, 77, device), output_hidden_states=False).pooler_output
        hidden = t5(_tokens(comps.tokenizers[1], prompts, t5_length, device))[0]
        return {"hidden": hidden, "pooled": pooled}
    l_enc, g_enc, t5 = comps.text_encoders
    out_l = l_enc(_tokens(comps.tokenizers[0], prompts, 77, device), output_hidden_states=True)
    out_g = g_enc(_tokens(comps.tokenizers[1], prompts, 77, device), output_hidden_states=True)
    clip_hidden = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2].to(out_l.hidden_states[-2].dtype)], dim=-1)
    t5_hidden = t5(_tokens(comps.tokenizers[2], prompts, t5_length, device))[0]
    clip_hidden = torch.nn.functional.pad(clip_hidden, (0, t5_hidden.shape[-1] - clip_hidden.shape[-1]))
    hidden = torch.cat([clip_hidden.to(t5_hidden.dtype), t5_hidden], dim=-2)
    pooled = torch.cat([out_l.text_embeds, out_g.text_embeds.to(out_l.text_embeds.dtype)], dim=-1)
    return {"hidden": hidden, "pooled": pooled}


def embedding_cache_key(spec: Dict[str, Any], prompts: Sequence[str], t5_length: int, dtype: torch.dtype) -> str:
    """Names the on-disk embeddings of ``prompts`` for this base model, its revision, the T5
    length and the dtype (any change computes them again)."""
    h = hashlib.sha256()
    h.update(json.dumps([spec["base"], t5_length, str(dtype), sorted(set(prompts))], sort_keys=True).encode())
    return h.hexdigest()[:24]


def save_embeddings(path: str, embeds: Dict[str, Dict[str, torch.Tensor]]) -> None:
    """Writes prompt embeddings as safetensors (``<n>.hidden``, ``<n>.pooled``; the prompts in
    the metadata) through a temporary file."""
    from safetensors.torch import save_file

    prompts = sorted(embeds)
    tensors = {f"{i}.{k}": v.detach().to("cpu").contiguous() for i, p in enumerate(prompts) for k, v in embeds[p].items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={"prompts": json.dumps(prompts)})
    os.replace(tmp, path)


def load_embeddings(path: str, device: torch.device) -> Optional[Dict[str, Dict[str, torch.Tensor]]]:
    """Reads :func:`save_embeddings`' file, or None when it is missing or damaged (recomputed)."""
    if not os.path.isfile(path):
        return None
    try:
        from safetensors import safe_open

        out: Dict[str, Dict[str, torch.Tensor]] = {}
        with safe_open(path, framework="pt", device=str(device)) as f:
            prompts = json.loads((f.metadata() or {})["prompts"])
            for i, p in enumerate(prompts):
                out[p] = {"hidden": f.get_tensor(f"{i}.hidden"), "pooled": f.get_tensor(f"{i}.pooled")}
        return out
    except Exception as e:  # a damaged cache is only slower
        log(f"warning: ignoring text-embedding cache {path}: {e}")
        return None


def build_pipeline(comps: Components) -> Any:
    """A ``FluxPipeline`` or ``StableDiffusion3Pipeline`` over the in-memory transformer and VAE,
    without text encoders (prompts are passed as embeddings)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(comps.noise_scheduler.config)
    if comps.arch == "flux":
        from diffusers import FluxPipeline

        pipe = FluxPipeline(scheduler=scheduler, vae=comps.vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=comps.denoiser)
    else:
        from diffusers import StableDiffusion3Pipeline

        pipe = StableDiffusion3Pipeline(
            transformer=comps.denoiser, scheduler=scheduler, vae=comps.vae,
            text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe: Any, comps: Components, embeds: Dict[str, Dict[str, torch.Tensor]], prompts: List[str], seeds: List[int], resolution: int, steps: int, guidance: float, negative: Optional[str]) -> List[Any]:
    """Renders one image per prompt from precomputed embeddings with a CPU generator per image.

    FLUX.1: ``guidance`` is the embedded guidance of [dev] (no classifier-free guidance, the
    negative prompt is not used). SD 3.5: classifier-free guidance with the embeddings of
    ``negative`` (the empty prompt when absent).
    """
    dtype = next(comps.denoiser.parameters()).dtype
    hidden = torch.stack([embeds[p]["hidden"] for p in prompts]).to(dtype)
    pooled = torch.stack([embeds[p]["pooled"] for p in prompts]).to(dtype)
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    kwargs: Dict[str, Any] = dict(prompt_embeds=hidden, pooled_prompt_embeds=pooled, num_inference_steps=steps, guidance_scale=guidance, generator=gens, height=resolution, width=resolution, output_type="pil")
    if comps.arch == "sd3":
        neg = embeds[negative or ""]
        kwargs["negative_prompt_embeds"] = neg["hidden"].to(dtype)[None].expand_as(hidden)
        kwargs["negative_pooled_prompt_embeds"] = neg["pooled"].to(dtype)[None].expand_as(pooled)
    return list(pipe(**kwargs).images)


def flow_settings(spec: Dict[str, Any]) -> Dict[str, Any]:
    """``spec.flow`` with the family defaults filled: shift ``resolution`` for FLUX.1, 3.0 for SD 3.5."""
    flow = dict(spec.get("flow") or {})
    flow.setdefault("timestepSampling", "logit_normal")
    flow.setdefault("logitMean", 0.0)
    flow.setdefault("logitStd", 1.0)
    flow.setdefault("modeScale", 1.29)
    flow.setdefault("lossWeighting", "none")
    flow.setdefault("guidanceScale", 1.0)
    if flow.get("shift") is None:
        flow["shift"] = "resolution" if spec["base"]["architecture"] == "flux" else 3.0
    return flow
