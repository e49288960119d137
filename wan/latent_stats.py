"""Per-channel latent statistics of the Wan VAEs and the (de)normalisation the DiT expects.

The VAEs (ours, ComfyUI's, diffusers') return *raw* mu. The diffusion models work on
``(mu - mean) / std`` per channel; samplers normalise on the way in and denormalise before decode.
The numbers are those of the official ``wan/modules/vae2_1.py`` / ``vae2_2.py`` (identical in
ComfyUI ``latent_formats.Wan21`` / ``Wan22``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatentStats:
    """Mean and std per latent channel of one VAE version."""

    version: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _shaped(self, values: tuple[float, ...], z: torch.Tensor) -> torch.Tensor:
        if z.dim() < 2 or z.shape[1] != self.channels:
            raise ValueError(f"Wan {self.version} latents need {self.channels} channels in dim 1, "
                             f"got shape {tuple(z.shape)}")
        shape = (1, self.channels) + (1,) * (z.dim() - 2)
        return torch.tensor(values, dtype=torch.float32, device=z.device).reshape(shape)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw VAE mu → the normalised space the DiT samples in."""
        return ((z.float() - self._shaped(self.mean, z)) / self._shaped(self.std, z)).to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents → raw VAE mu, ready for decode."""
        return (z.float() * self._shaped(self.std, z) + self._shaped(self.mean, z)).to(z.dtype)


WAN21 = LatentStats(
    version="2.1",
    mean=(-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
          0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921),
    std=(2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
         3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160),
)

WAN22 = LatentStats(
    version="2.2",
    mean=(-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
          -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
          -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
          -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
          -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
          0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667),
    std=(0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
         0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
         0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
         0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
         0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
         0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744),
)

BY_VERSION = {"2.1": WAN21, "2.2": WAN22}


def stats_for(version: str) -> LatentStats:
    """The stats of VAE ``version`` ("2.1" for 16-channel models, "2.2" for 48-channel TI2V-5B)."""
    try:
        return BY_VERSION[version]
    except KeyError:
        raise ValueError(f"unknown Wan VAE version {version!r}; expected one of {sorted(BY_VERSION)}") from None


def stats_for_channels(channels: int) -> LatentStats:
    """The stats for a latent with ``channels`` channels (16 → 2.1, 48 → 2.2)."""
    for stats in BY_VERSION.values():
        if stats.channels == channels:
            return stats
    raise ValueError(f"no Wan VAE has {channels} latent channels; expected 16 (2.1) or 48 (2.2)")


def normalize(z: torch.Tensor, version: str) -> torch.Tensor:
    """``(z - mean) / std`` per channel for VAE ``version``."""
    return stats_for(version).normalize(z)


def denormalize(z: torch.Tensor, version: str) -> torch.Tensor:
    """``z · std + mean`` per channel for VAE ``version``."""
    return stats_for(version).denormalize(z)
