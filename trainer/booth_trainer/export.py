"""The final model: a loadable Diffusers folder (full) or a LoRA safetensors file.

The LoRA file's keys are prefixed by the component: ``unet.``/``text_encoder.`` for the SD
families, ``transformer.`` for FLUX.1 and SD 3.5 (what ``FluxPipeline.load_lora_weights`` and
``StableDiffusion3Pipeline.load_lora_weights`` read).

Full: the pipeline is loaded from the base model with the trained components passed in, so
unchanged parts (VAE, tokenizers, scheduler, an untrained text encoder) are written from the
base files in their own precision, not from the half-precision copies used during training.
LoRA: ``pytorch_lora_weights.safetensors`` in the layout ``save_lora_weights`` writes since
diffusers 0.27 (``unet.<module path>.lora_A.weight`` / ``.lora_B.weight``, ``text_encoder.…``,
``text_encoder_2.…``), with the adapter configs under ``lora_adapter_metadata`` (what
``load_lora_weights`` reads to get alpha) and ``booth.lora_rank`` / ``booth.lora_alpha``. Either
way the output is written to ``model.tmp-<pid>`` and renamed to ``model`` when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict

import torch

from .models import Components, _source_kwargs

LORA_FILE = "pytorch_lora_weights.safetensors"


def folder_bytes(path: str) -> int:
    """Total size of the files under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def _swap_in(tmp: str, final: str) -> None:
    old = None
    if os.path.exists(final):
        old = f"{final}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _fresh_tmp(work: str) -> str:
    tmp = os.path.join(work, f"model.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def export_full(work: str, spec: Dict[str, Any], comps: Components, trained: Dict[str, torch.nn.Module]) -> int:
    """Writes ``WORK/model/`` as a Diffusers pipeline folder.

    :param trained: components trained in this run by name (``unet``, ``text_encoder``, ...).
    :returns: bytes written.
    """
    from diffusers import AutoencoderKL, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging

    # Loading a pipeline draws a carriage-return progress bar on stderr, which the worker's
    # line-based log would keep as a dozen fragments.
    diffusers_logging.disable_progress_bar()
    base = spec["base"]
    kwargs: Dict[str, Any] = dict(trained)
    if base.get("vae"):
        kwargs["vae"] = AutoencoderKL.from_pretrained(base["vae"], **_source_kwargs(base["vae"], None))
    if comps.arch == "sd3":
        cls = StableDiffusion3Pipeline
    elif comps.is_sdxl:
        cls = StableDiffusionXLPipeline
    else:
        cls = StableDiffusionPipeline
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(base["model"], **_source_kwargs(base["model"], base.get("revision")), **kwargs)
    if not comps.is_flow and getattr(pipe.scheduler.config, "prediction_type", None) != comps.prediction_type:
        # base.predictionType overrides the base config; the saved model must say what it predicts.
        pipe.scheduler.register_to_config(prediction_type=comps.prediction_type)
    tmp = _fresh_tmp(work)
    pipe.save_pretrained(tmp, safe_serialization=True)
    final = os.path.join(work, "model")
    _swap_in(tmp, final)
    return folder_bytes(final)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    return str(value)


def export_lora(work: str, adapters: Dict[str, torch.nn.Module], rank: int, alpha: float) -> int:
    """Writes ``WORK/model/pytorch_lora_weights.safetensors``.

    :param adapters: modules carrying the ``default`` adapter, by component name.
    :returns: bytes written.
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    tensors: Dict[str, torch.Tensor] = {}
    configs: Dict[str, Any] = {}
    for prefix, module in adapters.items():
        for key, t in get_peft_model_state_dict(module, adapter_name="default").items():
            tensors[f"{prefix}.{key}"] = t.detach().to("cpu", torch.float32).contiguous()
        for key, value in module.peft_config["default"].to_dict().items():
            configs[f"{prefix}.{key}"] = value
    metadata = {
        "format": "pt",
        "lora_adapter_metadata": json.dumps(configs, indent=2, sort_keys=True, default=_jsonable),
        "booth.lora_rank": str(rank),
        "booth.lora_alpha": str(alpha),
    }
    tmp = _fresh_tmp(work)
    save_file(tensors, os.path.join(tmp, LORA_FILE), metadata=metadata)
    final = os.path.join(work, "model")
    _swap_in(tmp, final)
    return folder_bytes(final)
