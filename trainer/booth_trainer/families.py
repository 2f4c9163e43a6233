"""The training objective of each architecture family, behind one interface (torch).

A family turns a batch of clean latents and its text conditioning into per-sample losses:
it draws the noise level, noises the latents, calls the denoiser and compares with the target.
The loop in :mod:`.train` knows nothing else about the family, so a new base family is a new
class here plus its loading in :mod:`.models`/:mod:`.flow_models`.

Everything a family does per step is device work with no host-device synchronisation (random
draws on the device generator, constants moved to the device once), so a step can be queued
ahead of the GPU and captured in a CUDA graph (:mod:`.speed`).

- :class:`UNetFamily` (SD 1.x, SD 2.x, SDXL): denoising diffusion, formulas in :mod:`.losses`.
- :class:`FlowFamily` (FLUX.1, SD 3.5): rectified flow, formulas in :mod:`.flow`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import torch

from .losses import add_noise, make_noise, min_snr_weights, per_sample_mse, target_for
from .models import Components

Batch = Dict[str, torch.Tensor]
#: The denoiser as called in training (the module itself or its ``torch.compile`` wrapper).
Denoiser = Callable[..., Any]


class Family:
    """The per-step math of one architecture family.

    :param comps: the loaded components.
    :param spec: the validated job spec.
    :param device: the training device.
    :param weight_dtype: the half-precision dtype of frozen weights (float32 on the CPU).
    """

    def __init__(self, comps: Components, spec: Dict[str, Any], device: torch.device, weight_dtype: torch.dtype) -> None:
        self.comps = comps
        self.spec = spec
        self.device = device
        self.weight_dtype = weight_dtype
        self.channels_last = False

    def per_sample_loss(self, denoiser: Denoiser, x0: torch.Tensor, cond: Batch) -> torch.Tensor:
        """Per-sample losses (B,) float32 for clean latents ``x0`` (B, C, H, W) and conditioning
        ``cond`` (``hidden`` (B, L, D), ``pooled`` (B, P) or absent, ``time_ids`` (B, 6) for SDXL).
        Runs inside the caller's autocast."""
        raise NotImplementedError


class UNetFamily(Family):
    """SD 1.x/2.x/SDXL: ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` at ``t ~ U{0..T-1}`` (Ho et al.
    2020), epsilon or v target (Salimans & Ho 2022), optional offset noise and Min-SNR-gamma."""

    def __init__(self, comps: Components, spec: Dict[str, Any], device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(comps, spec, device, weight_dtype)
        # On the device once: indexing a host tensor by device timesteps would copy it every step.
        self.alphas_cumprod = comps.noise_scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.n_train = int(comps.noise_scheduler.config.num_train_timesteps)

    def per_sample_loss(self, denoiser: Denoiser, x0: torch.Tensor, cond: Batch) -> torch.Tensor:
        comps = self.comps
        ac = self.alphas_cumprod
        timesteps = torch.randint(0, self.n_train, (x0.shape[0],), device=x0.device).long()
        noise = make_noise(x0, float(self.spec["noiseOffset"]))
        noisy = add_noise(x0, noise, timesteps, ac)
        target = target_for(comps.prediction_type, x0, noise, timesteps, ac)
        if self.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        added = None
        if comps.is_sdxl:
            added = {"text_embeds": cond["pooled"], "time_ids": cond["time_ids"]}
        pred = denoiser(noisy, timesteps, encoder_hidden_states=cond["hidden"], added_cond_kwargs=added, return_dict=False)[0]
        losses = per_sample_mse(pred, target)
        weights = min_snr_weights(timesteps, ac, self.spec["minSnrGamma"], comps.prediction_type)
        return losses * weights if weights is not None else losses


class FlowFamily(Family):
    """FLUX.1 and SD 3.5: ``x_sigma = (1 - sigma) x0 + sigma eps`` with sigma drawn by
    ``flow.timestepSampling`` and shifted by ``flow.shift``, target ``eps - x0``, loss weighted by
    ``flow.lossWeighting`` (Esser et al. 2024; :mod:`.flow`)."""

    def __init__(self, comps: Components, spec: Dict[str, Any], device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(comps, spec, device, weight_dtype)
        from .flow_models import flow_settings

        self.flow = flow_settings(spec)
        cfg = comps.denoiser.config
        self.guidance = bool(getattr(cfg, "guidance_embeds", False)) if comps.arch == "flux" else False
        self.scheduler_config = dict(comps.noise_scheduler.config)
        self._ids: Dict[Any, torch.Tensor] = {}

    def _static(self, key: Any, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        # Position ids and the guidance vector are the same every step: made once on the device.
        t = self._ids.get(key)
        if t is None:
            t = self._ids[key] = make()
        return t

    def per_sample_loss(self, denoiser: Denoiser, x0: torch.Tensor, cond: Batch) -> torch.Tensor:
        from .flow import apply_shift, image_ids, loss_weights, noised, pack_latents, sample_sigmas, text_ids, unpack_latents, velocity

        f = self.flow
        b, _c, h, w = x0.shape
        seq = (h // 2) * (w // 2)
        sigmas = sample_sigmas(b, f["timestepSampling"], x0.device, float(f["logitMean"]), float(f["logitStd"]), float(f["modeScale"]))
        sigmas = apply_shift(sigmas, f["shift"], seq, self.scheduler_config)
        noise = torch.randn_like(x0)
        xt = noised(x0, noise, sigmas).to(self.weight_dtype)
        hidden = cond["hidden"].to(self.weight_dtype)
        pooled = cond["pooled"].to(self.weight_dtype)
        if self.comps.arch == "flux":
            img = self._static(("img", h, w), lambda: image_ids(h, w, x0.device, self.weight_dtype))
            txt = self._static(("txt", hidden.shape[1]), lambda: text_ids(hidden.shape[1], x0.device, self.weight_dtype))
            guidance = None
            if self.guidance:
                g = float(f["guidanceScale"])
                guidance = self._static(("guidance", b), lambda: torch.full((b,), g, device=x0.device, dtype=torch.float32))
            pred = denoiser(
                hidden_states=pack_latents(xt),
                timestep=sigmas.to(self.weight_dtype),
                guidance=guidance,
                pooled_projections=pooled,
                encoder_hidden_states=hidden,
                txt_ids=txt,
                img_ids=img,
                return_dict=False,
            )[0]
            pred = unpack_latents(pred, h, w)
        else:
            pred = denoiser(hidden_states=xt, timestep=sigmas * 1000, encoder_hidden_states=hidden, pooled_projections=pooled, return_dict=False)[0]
        losses = per_sample_mse(pred, velocity(x0, noise))
        weights = loss_weights(f["lossWeighting"], sigmas)
        return losses * weights if weights is not None else losses


def family_for(comps: Components, spec: Dict[str, Any], device: torch.device, weight_dtype: torch.dtype) -> Family:
    """The family object of ``comps.arch``."""
    cls = FlowFamily if comps.is_flow else UNetFamily
    return cls(comps, spec, device, weight_dtype)

