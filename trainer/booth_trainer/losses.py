"""Noise, targets and loss weights of the denoising objective (torch).

Notation: ``x0`` latents, ``eps`` noise, ``a_t`` = ``alphas_cumprod[t]`` of the noise scheduler.

- Forward process (Ho et al. 2020, eq. 4): ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``.
- v-prediction target (Salimans & Ho 2022, "Progressive Distillation", sec. 4 and appendix D):
  ``v = sqrt(a_t) eps - sqrt(1 - a_t) x0``.
- Signal-to-noise ratio: ``SNR(t) = a_t / (1 - a_t)``.
- Min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
  Strategy", eq. 9 and sec. 3.4): the per-sample loss weight is ``min(SNR, gamma) / SNR`` for an
  epsilon target and ``min(SNR, gamma) / (SNR + 1)`` for a v target (the v loss already carries
  a factor ``SNR + 1`` relative to the x0 loss, so dividing by it gives the same effective
  weighting ``min(SNR, gamma)`` on x0).
- Offset noise (Guttenberg 2023, "Diffusion with Offset Noise", crosslabs.org): adds
  ``offset * N(0, 1)`` per sample and channel, constant over the image, so the model learns to
  change the mean brightness.
"""

from __future__ import annotations

from typing import Optional

import torch


def make_noise(latents: torch.Tensor, offset: float) -> torch.Tensor:
    """Gaussian noise shaped like ``latents`` (B, C, H, W), plus offset noise when ``offset > 0``.

    Draws from the global torch RNG of ``latents.device`` (saved in resume states).
    """
    noise = torch.randn_like(latents)
    if offset > 0:
        b, c = latents.shape[:2]
        noise = noise + offset * torch.randn((b, c, 1, 1), device=latents.device, dtype=latents.dtype)
    return noise


def _gather(values: torch.Tensor, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
    out = values.to(timesteps.device)[timesteps].float()
    return out.reshape(out.shape + (1,) * (ndim - 1))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` (Ho et al. 2020, eq. 4); shapes (B, C, H, W), t (B,)."""
    a = _gather(alphas_cumprod, timesteps, x0.ndim)
    return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)


def target_for(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The regression target: ``eps`` for ``epsilon``, ``v = sqrt(a_t) eps - sqrt(1-a_t) x0`` for
    ``v_prediction`` (Salimans & Ho 2022).

    :raises ValueError: for another prediction type.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        a = _gather(alphas_cumprod, timesteps, x0.ndim)
        return (a.sqrt() * noise.float() - (1 - a).sqrt() * x0.float()).to(noise.dtype)
    raise ValueError(f"unsupported prediction type {prediction_type!r}; the trainer knows epsilon and v_prediction")


def snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``SNR(t) = a_t / (1 - a_t)`` for each timestep, shape (B,), float32."""
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return a / (1 - a)


def min_snr_weights(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: Optional[float], prediction_type: str) -> Optional[torch.Tensor]:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023), shape (B,), or None when off.

    ``min(SNR, gamma) / SNR`` for epsilon, ``min(SNR, gamma) / (SNR + 1)`` for v-prediction.
    """
    if gamma is None:
        return None
    s = snr(timesteps, alphas_cumprod)
    clipped = torch.clamp(s, max=float(gamma))
    if prediction_type == "v_prediction":
        return clipped / (s + 1)
    return clipped / s.clamp(min=1e-8)


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample, in float32: (B, C, H, W) -> (B,)."""
    return torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))
