"""The one rule for video size widgets: each is rounded to what the model takes, and the node says so.

Width and height go to the nearest multiple of the VAE's spatial factor times the DiT's 2x2 patch
(16 for the Wan 2.1 VAE, 32 for Wan 2.2's), the length down to the nearest 4n+1 frames (ComfyUI's
core Wan nodes also round it down). The text for the node's status line names what changed, and
the log repeats it, so a rounded size is never silent and never fails late, after the models
have loaded.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("wanflow")

DIT_PATCH = 2
"""The DiT's spatial patch (1, 2, 2): latent height and width must be even."""


@dataclass(frozen=True)
class VideoSize:
    width: int
    height: int
    length: int
    note: str
    """``"832x480, 81 frames"``, plus what was rounded."""


def round_size(value: int, multiple: int) -> int:
    """Nearest multiple (at least one multiple)."""
    return max(multiple, int(round(value / multiple)) * multiple)


def round_length(frames: int, temporal_factor: int) -> int:
    """The nearest 4n+1 (for a temporal factor of 4) at or below ``frames``, at least 1."""
    return max(1, frames - (frames - 1) % temporal_factor)


def fit_video_size(width: int, height: int, length: int, vae, what: str) -> VideoSize:
    """Round the size widgets of node ``what`` for ``vae`` (see the module docstring)."""
    multiple = vae.spatial_factor * DIT_PATCH
    new_width, new_height = round_size(width, multiple), round_size(height, multiple)
    new_length = round_length(length, vae.temporal_factor)
    changes = []
    if (new_width, new_height) != (width, height):
        changes.append(f"{width}x{height} rounded: the model needs multiples of {multiple}")
    if new_length != length:
        changes.append(f"{length} frames rounded down to {new_length}: the model needs 4n+1")
    note = f"{new_width}x{new_height}, {new_length} frames"
    if changes:
        note += f" ({'; '.join(changes)})"
        log.warning("%s: using %s", what, note)
    return VideoSize(new_width, new_height, new_length, note)
