"""Context windows: sample more latent frames than the model's window in one solver run.

Wan models are trained on clips of a fixed length (81 pixel frames = 21 latent frames for the
14B models, 17 = 5 for the nano ones). To render a longer clip, every model call is split into
overlapping windows along the latent frame axis, as ComfyUI's and kijai's context windows do:

* **Placement** (:func:`window_starts`): windows of ``length`` latent frames, each starting
  ``length − overlap`` after the previous one; the last window is moved back so it ends on the
  clip's last frame (so every window has the full length and every frame is covered).
* **Blending** (:func:`frame_weights`): each window's prediction is weighted per frame,
  ``uniform`` (all 1) or ``pyramid`` (1 at the window's edges rising linearly to its middle), and
  the weights of each frame are normalised to sum to 1 over the windows that cover it.
* **One noise schedule**: the windows are parts of one model call of one solver step, so all of
  them see the same sigma and the solver (UniPC / DPM++ history included) runs once on the whole
  latent: no window is denoised on its own schedule.

Conditioning is cut the same way: a tensor input with a frame axis (I2V's ``y``, VACE contexts,
per-frame or per-token timesteps) is sliced to the window. So the I2V first-frame condition (the
mask and the image latent of frame 0) is seen only by the window that holds frame 0, and TI2V's
clean first frame only by that window; later windows get the "nothing known" part of the
condition. Text and CLIP image embeddings go to every window. VACE reference frames
(``vace_trim_frames``) are pinned: every window holds them in front of its own frames.

**Drift control** (ours). Windows after the first tend to wander in colour and brightness,
because nothing but the overlap ties them to the first. Latent channels of the Wan VAE carry
colour and brightness largely as per-channel offsets and scales, so per step, with the step's
sigma ``σ``, we turn each window's velocity into its denoised prediction ``x0 = x − σ·v`` and
match, per batch item and latent channel, its mean and standard deviation to those of the
prediction already blended from the earlier windows, measured over the frames they share (the
overlap). Windows are visited in order, so window k is matched to what windows 0..k−1 made of
the overlap, which is itself matched to window 0: every window is anchored to the first one,
while changes over time within the clip (an object moving across) are kept, since only frames
the two windows both predict enter the statistics. Without overlap, the whole window is matched
to the whole first window. The std ratio is clamped to [1/2, 2] so a near-constant channel cannot
blow up. The corrected ``x0`` goes back to a velocity, ``v = (x − x0)/σ``, so the solver is
unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

ModelFn = Callable[..., torch.Tensor]

BLENDS: tuple[str, ...] = ("pyramid", "uniform")
"""What the sampler node's ``context_blend`` accepts."""

VAE_TEMPORAL_FACTOR = 4
"""Pixel frames per latent frame after the first (Wan 2.1 and 2.2 VAEs)."""

STD_RATIO_LIMIT = 2.0


def latent_window(pixel_frames: int) -> int:
    """Latent frames of a window of ``pixel_frames`` (4n+1 → n+1; other lengths round down)."""
    return (pixel_frames - 1) // VAE_TEMPORAL_FACTOR + 1


def latent_overlap(pixel_frames: int) -> int:
    """Latent frames of an overlap of ``pixel_frames`` (rounded up: 16 → 4, 17 → 5, 0 → 0)."""
    return -(-pixel_frames // VAE_TEMPORAL_FACTOR)


def window_starts(frames: int, length: int, overlap: int) -> list[int]:
    """First latent frame of each window covering ``frames`` frames.

    Windows of ``length`` frames start ``length − overlap`` apart; the last one is moved back to
    end on the last frame. One window (start 0) when the clip fits.
    """
    if frames < 1 or length < 1:
        raise ValueError(f"context windows: frames and window length must be >= 1, got {frames}, {length}")
    if not 0 <= overlap < length:
        raise ValueError(f"context windows: overlap must be in [0, {length}) latent frames, got {overlap}")
    if frames <= length:
        return [0]
    stride = length - overlap
    starts = list(range(0, frames - length, stride))
    return starts + [frames - length]


def window_weights(length: int, blend: str) -> torch.Tensor:
    """Unnormalised per-frame weights ``[length]`` of one window.

    ``pyramid``: 1, 2, … up to the middle and back down (as FreeNoise and ComfyUI weight),
    so a frame counts most in the window where it sits furthest from an edge.
    """
    if blend == "uniform":
        return torch.ones(length)
    if blend == "pyramid":
        ramp = torch.arange(1, length + 1, dtype=torch.float32)
        return torch.minimum(ramp, ramp.flip(0))
    raise ValueError(f"context windows: blend {blend!r} is not one of {', '.join(BLENDS)}")


def frame_weights(frames: int, starts: Sequence[int], length: int, blend: str) -> torch.Tensor:
    """``[windows, frames]`` blend weights: zero outside a window, each frame's column sums to 1."""
    length = min(length, frames)
    weights = torch.zeros(len(starts), frames)
    own = window_weights(length, blend)
    for k, start in enumerate(starts):
        weights[k, start:start + length] = own
    total = weights.sum(dim=0)
    if not bool((total > 0).all()):
        missing = (total == 0).nonzero().flatten().tolist()
        raise ValueError(f"context windows: latent frames {missing} are in no window")
    return weights / total


@dataclass(frozen=True)
class ContextWindows:
    """Settings of one run's context windows, in **latent** frames (see the module docstring).

    ``length``: frames per window; ``overlap``: frames shared by neighbouring windows;
    ``blend``: "pyramid" or "uniform"; ``drift_control``: match each window's colour statistics
    to the first window's.
    """

    length: int
    overlap: int
    blend: str = "pyramid"
    drift_control: bool = True

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"context windows: window length must be >= 1 latent frame, got {self.length}")
        if not 0 <= self.overlap < self.length:
            raise ValueError(f"context windows: overlap must be in [0, {self.length}) latent frames "
                             f"(less than the window), got {self.overlap}")
        if self.blend not in BLENDS:
            raise ValueError(f"context windows: blend {self.blend!r} is not one of {', '.join(BLENDS)}")

    @classmethod
    def from_pixel_frames(cls, window: int, overlap: int, blend: str = "pyramid",
                          drift_control: bool = True, where: str = "context windows") -> "ContextWindows":
        """From a window and overlap in pixel frames (the node's widgets), with errors naming them."""
        if window < 5:
            raise ValueError(f"{where}: context_window must be 0 (off) or at least 5 pixel frames, got {window}")
        if not 0 <= overlap < window:
            raise ValueError(f"{where}: context_overlap must be in [0, context_window = {window}) pixel frames, "
                             f"got {overlap}")
        length, shared = latent_window(window), latent_overlap(overlap)
        if shared >= length:
            raise ValueError(f"{where}: context_overlap {overlap} pixel frames is {shared} latent frames, which "
                             f"leaves no new frame in a window of {window} pixel frames ({length} latent); "
                             f"use a smaller overlap")
        return cls(length, shared, blend, drift_control)

    def covers(self, frames: int) -> bool:
        """True when one window holds the whole clip (the model then runs unchanged)."""
        return frames <= self.length

    def model_for(self, model: ModelFn, sigma: float, pinned: int = 0) -> ModelFn:
        """``model`` over the whole latent, run window by window at a step with noise level ``sigma``.

        ``pinned``: leading frames every window holds (VACE reference frames), not windowed.
        """
        def windowed(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, **extras) -> torch.Tensor:
            if self.covers(x.shape[2] - pinned):
                return model(x, t, context, **extras)
            return self._run(model, float(sigma), pinned, x, t, context, extras)

        return windowed

    def plan(self, frames: int) -> tuple[list[int], torch.Tensor]:
        """Window starts and blend weights for ``frames`` windowed frames."""
        starts = window_starts(frames, self.length, self.overlap)
        return starts, frame_weights(frames, starts, self.length, self.blend)

    def _run(self, model: ModelFn, sigma: float, pinned: int, x: torch.Tensor, t: torch.Tensor,
             context: torch.Tensor, extras: dict) -> torch.Tensor:
        frames = x.shape[2]
        starts, weights = self.plan(frames - pinned)
        weights = weights.to(device=x.device, dtype=torch.float32)
        drift = self.drift_control and sigma > 0.0
        x32 = x.float()
        blended: Optional[torch.Tensor] = None
        covered = torch.zeros(frames, device=x.device)       # weight already given to each frame
        for k, start in enumerate(starts):
            index = window_index(start, self.length, pinned, x.device)
            out = model(x.index_select(2, index), _slice_time(t, index, frames), context,
                        **{name: _slice_frames(value, index, frames) for name, value in extras.items()})
            if blended is None:
                blended = torch.zeros(out.shape[:2] + x.shape[2:], device=x.device, dtype=torch.float32)
            pred = out.float()
            if drift:
                x0 = x32.index_select(2, index) - sigma * pred
                x0 = self._match(x0, blended, covered, index, pinned, x32, sigma, first=k == 0)
                pred = (x32.index_select(2, index) - x0) / sigma
            w = torch.full((frames,), 1.0 / len(starts), device=x.device)   # pinned: a plain mean
            w[pinned:] = weights[k]
            w = w.index_select(0, index)
            blended.index_add_(2, index, pred * w.view(1, 1, -1, 1, 1))
            covered.index_add_(0, index, w)
        return blended.to(out.dtype)

    def _match(self, x0: torch.Tensor, blended: torch.Tensor, covered: torch.Tensor, index: torch.Tensor,
               pinned: int, x: torch.Tensor, sigma: float, first: bool) -> torch.Tensor:
        """``x0`` with each channel's mean/std matched to the earlier windows' prediction."""
        if first:
            return x0
        window_frames = index >= pinned
        shared = window_frames & (covered.index_select(0, index) > 0)
        done = covered.clamp(min=1e-12).view(1, 1, -1, 1, 1)
        reference_x0 = x - sigma * (blended / done)          # earlier windows' blended x0 (normalised)
        if bool(shared.any()):
            ours = x0[:, :, shared]
            theirs = reference_x0.index_select(2, index)[:, :, shared]
        else:                                                # no overlap: whole window vs the earlier ones
            ours = x0[:, :, window_frames]
            first_frames = covered[pinned:] > 0
            theirs = reference_x0[:, :, pinned:][:, :, first_frames]
        return match_channel_stats(x0, ours, theirs)


def window_index(start: int, length: int, pinned: int, device: torch.device) -> torch.Tensor:
    """Frame indices of one window: the pinned frames, then ``length`` frames from ``start``."""
    own = torch.arange(pinned + start, pinned + start + length)
    return torch.cat([torch.arange(pinned), own]).to(device)


def match_channel_stats(x: torch.Tensor, ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """``x`` moved so that ``ours`` (a part of it) would get the per-(batch, channel) mean and std of
    ``theirs``; the std ratio is clamped to [1/2, 2]."""
    dims = tuple(range(2, ours.ndim))
    mean_o, std_o = ours.mean(dim=dims, keepdim=True), ours.std(dim=dims, keepdim=True)
    mean_t, std_t = theirs.mean(dim=dims, keepdim=True), theirs.std(dim=dims, keepdim=True)
    ratio = (std_t / std_o.clamp(min=1e-6)).clamp(1.0 / STD_RATIO_LIMIT, STD_RATIO_LIMIT)
    return (x - mean_o) * ratio + mean_t


def _slice_frames(value, index: torch.Tensor, frames: int):
    """A DiT keyword input cut to the window: tensors (or lists of them) with ``frames`` frames."""
    if isinstance(value, torch.Tensor) and value.ndim == 5 and value.shape[2] == frames:
        return value.index_select(2, index.to(value.device))
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return [_slice_frames(v, index, frames) for v in value]
    return value


def _slice_time(t: torch.Tensor, index: torch.Tensor, frames: int) -> torch.Tensor:
    """Timesteps for the window: ``[B]`` as is; per-frame ``[B, F]`` or per-token ``[B, F·tokens]``
    (tokens ordered frame-major, as the DiT patchifies) cut to the window's frames."""
    if t.ndim < 2:
        return t
    per_frame = t.shape[1] // frames
    if per_frame * frames != t.shape[1]:
        raise ValueError(f"context windows: timesteps of shape {tuple(t.shape)} do not split over {frames} frames")
    return t.view(t.shape[0], frames, per_frame).index_select(1, index.to(t.device)).reshape(t.shape[0], -1)
