"""Flow-matching math for the transformer families (FLUX.1, SD 3.5) (torch).

Notation: ``x0`` latents, ``eps`` standard normal noise, ``sigma`` in (0, 1) the noise level.

- Rectified flow (Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution
  Image Synthesis", ICML, sec. 2 and eq. 3 with ``a_t = 1 - t``, ``b_t = t``): the noised input is
  ``x_sigma = (1 - sigma) * x0 + sigma * eps`` and the network regresses the velocity
  ``v = eps - x0`` (the derivative of ``x_sigma`` in ``sigma``).
- Timestep sampling (same paper, sec. 3.1): *logit-normal* ``sigma = sigmoid(m + s * n)`` with
  ``n ~ N(0, 1)`` (eq. 19; ``m = 0, s = 1`` was their best), *mode sampling with heavy tails*
  ``sigma = 1 - u - c * (cos^2(pi u / 2) - 1 + u)`` with ``u ~ U(0, 1)`` (eq. 20), or uniform.
- Shift towards noise for larger images (sec. 5.3.2, eq. 23): ``sigma' = s sigma / (1 + (s - 1)
  sigma)``; SD 3.5's scheduler uses ``s = 3``. FLUX.1 instead derives the shift from the image
  token count: ``mu`` is linear in the sequence length between ``base_shift`` (0.5) at 256 tokens
  and ``max_shift`` (1.15) at 4096 tokens, and ``sigma' = e^mu / (e^mu + 1/sigma - 1)`` (the
  ``calculate_shift`` and exponential time shift of the FLUX.1 pipeline in diffusers, whose
  constants are the model's ``scheduler_config.json``).
- Loss weighting (sec. 3.1 and Table 1): ``sigma_sqrt`` weights by ``sigma^-2``; ``cosmap`` by
  ``2 / (pi (1 - 2 sigma + 2 sigma^2))``; ``none`` uniformly.
- FLUX.1 packing: the 16-channel latent (B, 16, H, W) is cut into 2x2 patches, giving a sequence
  (B, H/2 * W/2, 64); each image token has position id ``(0, row, col)``, each text token
  ``(0, 0, 0)`` (FLUX.1's 3-axis RoPE, as in the reference pipeline).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import torch

#: FLUX.1's defaults for the resolution-dependent shift (its scheduler_config.json).
FLUX_SHIFT_DEFAULTS = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


def sample_sigmas(batch: int, scheme: str, device: torch.device, logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29) -> torch.Tensor:
    """Draws ``batch`` noise levels in (0, 1) by the weighting scheme, float32, shape (B,).

    Uses the global torch RNG of ``device`` (saved in resume states), never the host.

    :param scheme: ``logit_normal``, ``mode`` or ``uniform``.
    :raises ValueError: for another scheme.
    """
    if scheme == "logit_normal":
        n = torch.randn((batch,), device=device, dtype=torch.float32)
        return torch.sigmoid(logit_mean + logit_std * n)
    if scheme == "mode":
        u = torch.rand((batch,), device=device, dtype=torch.float32)
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    if scheme == "uniform":
        return torch.rand((batch,), device=device, dtype=torch.float32)
    raise ValueError(f"unknown timestep sampling {scheme!r}; use logit_normal, mode or uniform")


def shift_constant(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """``s sigma / (1 + (s - 1) sigma)`` (SD3 paper, eq. 23); ``shift == 1`` leaves sigmas unchanged."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def resolution_mu(image_seq_len: int, config: Optional[Dict[str, Any]] = None) -> float:
    """FLUX.1's ``mu`` for an image of ``image_seq_len`` tokens (linear between the config's
    ``base_shift`` at ``base_image_seq_len`` and ``max_shift`` at ``max_image_seq_len``)."""
    c = dict(FLUX_SHIFT_DEFAULTS)
    for k in c:
        if config and config.get(k) is not None:
            c[k] = config[k]
    m = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    return float(image_seq_len * m + (c["base_shift"] - m * c["base_image_seq_len"]))


def shift_exponential(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """``e^mu / (e^mu + 1/sigma - 1)`` (FLUX.1's time shift); sigmas in (0, 1]."""
    e = math.exp(mu)
    return e / (e + (1 / sigmas - 1))


def apply_shift(sigmas: torch.Tensor, shift: Union[str, float, None], image_seq_len: int, config: Optional[Dict[str, Any]] = None) -> torch.Tensor:
    """Applies the spec's ``flow.shift``: ``resolution`` (FLUX.1's mu), a number, or None (none)."""
    if shift is None:
        return sigmas
    if shift == "resolution":
        return shift_exponential(sigmas, resolution_mu(image_seq_len, config))
    return shift_constant(sigmas, float(shift))


def noised(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) x0 + sigma eps`` with sigma (B,) broadcast over (B, C, H, W); in x0's dtype."""
    s = sigmas.reshape(sigmas.shape + (1,) * (x0.ndim - 1))
    return ((1 - s) * x0.float() + s * noise.float()).to(x0.dtype)


def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target ``eps - x0`` in float32."""
    return noise.float() - x0.float()


def loss_weights(scheme: str, sigmas: torch.Tensor) -> Optional[torch.Tensor]:
    """Per-sample loss weights (B,) of ``flow.lossWeighting``, or None for ``none``.

    :raises ValueError: for an unknown scheme.
    """
    if scheme == "none":
        return None
    if scheme == "sigma_sqrt":
        return (sigmas.float() ** -2.0).clamp(max=1e4)
    if scheme == "cosmap":
        bot = 1 - 2 * sigmas + 2 * sigmas**2
        return 2 / (math.pi * bot)
    raise ValueError(f"unknown loss weighting {scheme!r}; use none, sigma_sqrt or cosmap")


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): 2x2 patches in row-major order, channels outermost."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for a latent of height ``h`` and width ``w``."""
    b, _n, d = x.shape
    c = d // 4
    x = x.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Position ids (H/2 * W/2, 3) of the packed image tokens: ``(0, row, col)``."""
    rows = torch.arange(h // 2, dtype=torch.float32)[:, None].expand(h // 2, w // 2)
    cols = torch.arange(w // 2, dtype=torch.float32)[None, :].expand(h // 2, w // 2)
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return ids.to(device=device, dtype=dtype)


def text_ids(length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Position ids (L, 3) of the text tokens: all zeros."""
    return torch.zeros((length, 3), device=device, dtype=dtype)
