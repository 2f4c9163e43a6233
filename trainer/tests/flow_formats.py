"""The Python half of the FLUX.1/SD 3.5 format proof (test/convert/flow-formats.test.ts).

``make DIR`` builds tiny FLUX.1- and SD 3.5-shaped pipelines from the published configs, puts
random LoRA adapters on their transformers (the layers Booth's trainer targets), writes each LoRA
as the trainer does (``transformer.<module>.lora_A/B.weight`` with ``booth.lora_*`` metadata) and
the transformer's output with the adapter applied on fixed inputs. Booth's TypeScript converter
then writes the single files. ``check DIR`` loads those files with diffusers — the kohya FLUX.1
LoRA through its kohya converter, the diffusers-layout LoRAs directly, the SD 3.5 single file
through ``from_single_file`` — and prints, as one JSON line, how far each is from the original.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

RANK, ALPHA = 4, 8.0


def _inputs(arch: str, transformer: Any) -> Dict[str, Any]:
    g = torch.Generator().manual_seed(7)
    cfg = transformer.config
    if arch == "flux":
        n, txt = 16 * 16, 7
        return dict(
            hidden_states=torch.randn(1, n, cfg.in_channels, generator=g),
            timestep=torch.tensor([0.4]),
            guidance=torch.tensor([1.0]),
            pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
            encoder_hidden_states=torch.randn(1, txt, cfg.joint_attention_dim, generator=g),
            txt_ids=torch.zeros(txt, 3),
            img_ids=torch.zeros(n, 3),
            return_dict=False,
        )
    return dict(
        hidden_states=torch.randn(1, cfg.in_channels, 32, 32, generator=g),
        timestep=torch.tensor([400.0]),
        encoder_hidden_states=torch.randn(1, 9, cfg.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
        return_dict=False,
    )


def _transformer(arch: str, folder: str) -> Any:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls = FluxTransformer2DModel if arch == "flux" else SD3Transformer2DModel
    return cls.from_pretrained(folder, subfolder="transformer")


def make(out: str) -> None:
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from booth_trainer.flow_models import lora_targets
    from tests.tiny_models import build_flux, build_sd35

    # FLUX.1's real width: diffusers' kohya converter assumes it for the single blocks' linear1.
    build_flux(os.path.join(out, "flux"), full_width=True)
    build_sd35(os.path.join(out, "sd35"))
    for arch, folder in (("flux", "flux"), ("sd3", "sd35")):
        t = _transformer(arch, os.path.join(out, folder))
        t.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=lora_targets(arch, "attention-mlp")))
        torch.manual_seed(3)
        with torch.no_grad():
            for name, p in t.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.2)
        state = {f"transformer.{k}": v.contiguous() for k, v in get_peft_model_state_dict(t).items()}
        save_file(state, os.path.join(out, f"{folder}-lora.safetensors"), metadata={"format": "pt", "booth.lora_rank": str(RANK), "booth.lora_alpha": str(ALPHA)})
        with torch.no_grad():
            ref = t(**_inputs(arch, t))[0]
        torch.save(ref, os.path.join(out, f"{folder}-ref.pt"))


def check(out: str) -> None:
    from diffusers import AutoencoderKL, FluxPipeline, SD3Transformer2DModel, StableDiffusion3Pipeline

    result: Dict[str, Any] = {}

    def with_lora(cls: Any, folder: str, file: str, arch: str) -> float:
        pipe = cls.from_pretrained(os.path.join(out, folder))
        pipe.load_lora_weights(os.path.join(out, file))
        with torch.no_grad():
            got = pipe.transformer(**_inputs(arch, pipe.transformer))[0]
        ref = torch.load(os.path.join(out, f"{folder}-ref.pt"))
        return float((got - ref).abs().max() / ref.abs().max())

    result["flux_kohya"] = with_lora(FluxPipeline, "flux", "flux-kohya.safetensors", "flux")
    result["flux_diffusers"] = with_lora(FluxPipeline, "flux", "flux-diffusers.safetensors", "flux")
    result["sd35_lora"] = with_lora(StableDiffusion3Pipeline, "sd35", "sd35-lora-out.safetensors", "sd3")
    base = StableDiffusion3Pipeline.from_pretrained(os.path.join(out, "sd35"))
    with torch.no_grad():
        plain = base.transformer(**_inputs("sd3", base.transformer))[0]
    result["sd35_lora_effect"] = float((plain - torch.load(os.path.join(out, "sd35-ref.pt"))).abs().max())

    single = os.path.join(out, "sd35-full.safetensors")
    t = SD3Transformer2DModel.from_single_file(single, config=os.path.join(out, "sd35"), subfolder="transformer")
    a, b = t.state_dict(), base.transformer.state_dict()
    result["sd35_full_keys"] = sorted(set(a) ^ set(b))
    result["sd35_full_max_diff"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in b)
    vae = AutoencoderKL.from_single_file(single, config=os.path.join(out, "sd35"), subfolder="vae")
    va, vb = vae.state_dict(), base.vae.state_dict()
    result["sd35_vae_keys"] = sorted(set(va) ^ set(vb))
    result["sd35_vae_max_diff"] = max(float((va[k].float() - vb[k].float()).abs().max()) for k in vb)
    with torch.no_grad():
        result["sd35_full_output_diff"] = float((t(**_inputs("sd3", t))[0] - plain).abs().max())
    print(json.dumps(result))


if __name__ == "__main__":
    {"make": make, "check": check}[sys.argv[1]](sys.argv[2])
