"""The rectified-flow objective Wan is trained with, for any ``WanDiT``-shaped model.

A clean latent ``x0`` and noise ``eps`` are mixed as ``x_t = (1 - sigma) x0 + sigma eps``; the
model sees ``t = 1000 sigma`` and predicts the velocity ``eps - x0``. Sigmas are drawn as the
sampler spaces them: uniform in the unshifted variable, then shifted with the schedule's
``shift`` (``samplers.schedules.shift_sigmas``), optionally restricted to one expert's range.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..samplers.schedules import NUM_TRAIN_TIMESTEPS, shift_sigmas


@dataclass(frozen=True)
class SigmaRange:
    """Sigmas in ``[low, high)`` (an expert's share of the schedule) after the shift."""

    shift: float
    low: float = 0.0
    high: float = 1.0

    def _unshift(self, sigma: float) -> float:
        """Inverse of ``shift * u / (1 + (shift - 1) u)``."""
        return sigma / (self.shift - (self.shift - 1) * sigma)

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        lo, hi = self._unshift(self.low), self._unshift(self.high)
        u = lo + (hi - lo) * torch.rand(batch, generator=generator)
        return shift_sigmas(u, self.shift).clamp(1e-4, 1.0).float()


def expert_sigmas(expert: str, shift: float, boundary: float) -> SigmaRange:
    """The sigmas a Wan 2.2 expert sees when sampling: ``[boundary, 1)`` for ``high``,
    ``[0, boundary)`` for ``low``, everything for ``full``."""
    if expert == "high":
        return SigmaRange(shift, boundary, 1.0)
    if expert == "low":
        return SigmaRange(shift, 0.0, boundary)
    if expert == "full":
        return SigmaRange(shift)
    raise ValueError(f"expert must be 'high', 'low' or 'full', got {expert!r}")


def noisy_latent(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * noise


def flow_matching_loss(model: Callable[..., torch.Tensor], x0: torch.Tensor, context: torch.Tensor,
                       sigma: torch.Tensor, noise: torch.Tensor, *, y: Optional[torch.Tensor] = None,
                       reduce: bool = True, **extras) -> torch.Tensor:
    """Mean squared velocity error (per sample when ``reduce`` is False)."""
    error = velocity_error(model, x0, context, sigma, noise, y=y, **extras)
    per_sample = error.flatten(1).mean(1)
    return per_sample.mean() if reduce else per_sample


def first_frame_weighted_loss(model: Callable[..., torch.Tensor], x0: torch.Tensor, context: torch.Tensor,
                              sigma: torch.Tensor, noise: torch.Tensor, weight: float, *,
                              y: Optional[torch.Tensor] = None, first: int = 0, **extras) -> torch.Tensor:
    """The flow-matching loss plus ``weight`` times the share of latent frame ``first``, the video's
    first (0, or the one after VACE's reference frames): I2V must give back the start picture, and a
    small error there shows most once decoded; R2V got the colour wrong there most often."""
    error = velocity_error(model, x0, context, sigma, noise, y=y, **extras)
    return error.mean() + weight * error[:, :, first].mean()


def velocity_error(model: Callable[..., torch.Tensor], x0: torch.Tensor, context: torch.Tensor,
                   sigma: torch.Tensor, noise: torch.Tensor, *, y: Optional[torch.Tensor] = None,
                   **extras) -> torch.Tensor:
    """Element-wise squared error of the predicted velocity against ``noise - x0``."""
    x_t = noisy_latent(x0, noise, sigma)
    velocity = model(x_t, sigma * NUM_TRAIN_TIMESTEPS, context, y=y, **extras)
    return F.mse_loss(velocity, noise - x0, reduction="none")
