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

#: The real SD configs and CLIP tokenizer (``../shared/models``; ``BOOTH_SHARED_MODELS`` overrides,
#: e.g. on a GPU host where only a copy travels).
SHARED_MODELS = os.environ.get("BOOTH_SHARED_MODELS") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "models"))


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


#: Published configs of the flow-matching bases (FLUX.1, SD 3.5), kept in the repository.
FIXTURE_MODELS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "models"))


def _fixture(*parts: str) -> Dict[str, Any]:
    with open(os.path.join(FIXTURE_MODELS, *parts), "r", encoding="utf-8") as f:
        cfg = json.load(f)
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def build_t5_tokenizer(folder: str) -> Any:
    """A small SentencePiece-style (Unigram, metaspace) T5 tokenizer saved to ``folder``: whole
    words of the test captions plus single letters, ids far below T5's vocabulary of 32 128.
    Real FLUX.1/SD 3.5 folders ship the real one (``tokenizer_2``/``tokenizer_3``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = ["photo", "of", "ohwx", "man", "woman", "a", "dog", "portrait", "close-up", "smiling"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in words] + [(c, -5.0) for c in letters] + [("\u2581" + c, -6.0) for c in letters]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)
    fast.save_pretrained(folder)
    return fast


def _tiny_vae16(base: str):
    from diffusers import AutoencoderKL

    cfg = _fixture(base, "vae", "config.json")
    cfg.update(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8, sample_size=256)
    return AutoencoderKL(**cfg)


def _tiny_t5(hidden: int):
    from transformers import T5Config, T5EncoderModel

    cfg = _fixture("flux1-dev", "text_encoder_2", "config.json")
    for k in ("architectures", "model_type"):
        cfg.pop(k, None)
    cfg.update(d_model=hidden, d_ff=hidden * 2, d_kv=8, num_heads=hidden // 8, num_layers=2, num_decoder_layers=2)
    return T5EncoderModel(T5Config(**cfg))


def _tiny_clip(base: str, name: str, hidden: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = _fixture(base, name, "config.json")
    for k in ("architectures", "model_type"):
        cfg.pop(k, None)
    cfg.update(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2, num_attention_heads=2, projection_dim=hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(**cfg))


def build_flux(folder: str, seed: int = 0, guidance: bool = True, full_width: bool = False) -> str:
    """Writes a tiny FLUX.1-shaped pipeline (one double- and one single-stream block, real
    classes and config keys, 16-channel VAE with FLUX.1's factors) to ``folder``.

    :param full_width: FLUX.1's real width (24 heads of 128, 3072) instead of 32, for code that
        assumes it (diffusers' kohya LoRA converter hard-codes the single-block widths).
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    clip_hidden, t5_hidden = 32, 32
    tcfg = _fixture("flux1-dev", "transformer", "config.json")
    tcfg.update(num_layers=1, num_single_layers=1, joint_attention_dim=t5_hidden, pooled_projection_dim=clip_hidden, guidance_embeds=guidance)
    if not full_width:
        tcfg.update(attention_head_dim=16, num_attention_heads=2, axes_dims_rope=[4, 6, 6])
    transformer = FluxTransformer2DModel(**tcfg)
    tok2_dir = os.path.join(folder, "_t5tok")
    t5_tok = build_t5_tokenizer(tok2_dir)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(_fixture("flux1-dev", "scheduler", "scheduler_config.json")),
        vae=_tiny_vae16("flux1-dev"),
        text_encoder=_tiny_clip("flux1-dev", "text_encoder", clip_hidden, False),
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(SHARED_MODELS, "clip-tokenizer")),
        text_encoder_2=_tiny_t5(t5_hidden),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    import shutil

    shutil.rmtree(tok2_dir, ignore_errors=True)
    return folder


def build_sd35(folder: str, seed: int = 0) -> str:
    """Writes a tiny SD 3.5 Medium-shaped pipeline (two MMDiT blocks, the first with dual
    attention, RMS QK-norm, three text encoders) to ``folder``."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    l_hidden, g_hidden, t5_hidden = 16, 16, 64
    tcfg = _fixture("sd3.5-medium", "transformer", "config.json")
    tcfg.update(
        sample_size=32, num_layers=2, attention_head_dim=8, num_attention_heads=4, joint_attention_dim=t5_hidden,
        caption_projection_dim=32, pooled_projection_dim=l_hidden + g_hidden, pos_embed_max_size=64, dual_attention_layers=[0],
    )
    transformer = SD3Transformer2DModel(**tcfg)
    tok_dir = os.path.join(folder, "_t5tok")
    t5_tok = build_t5_tokenizer(tok_dir)
    clip_tok = CLIPTokenizer.from_pretrained(os.path.join(SHARED_MODELS, "clip-tokenizer"))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(_fixture("sd3.5-medium", "scheduler", "scheduler_config.json")),
        vae=_tiny_vae16("sd3.5-medium"),
        text_encoder=_tiny_clip("sd3.5-medium", "text_encoder", l_hidden, True),
        tokenizer=clip_tok,
        text_encoder_2=_tiny_clip("sd3.5-medium", "text_encoder_2", g_hidden, True),
        tokenizer_2=clip_tok,
        text_encoder_3=_tiny_t5(t5_hidden),
        tokenizer_3=t5_tok,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    import shutil

    shutil.rmtree(tok_dir, ignore_errors=True)
    return folder
