"""Context windows: sample more latent frames than the model's window in one solver run.

Wan models are trained on clips of a fixed length (81 pixel frames = 21 latent frames for the
14B models, 17 = 5 for the nano ones). To render a longer clip, each step's guided prediction is
computed over overlapping windows along the latent frame axis, as ComfyUI's and kijai's context
windows do, and blended:

* **Anchor frame** (on by default): latent frame 0 is in every window, in front of the window's
  own frames. Wan's VAE is causal: latent frame 0 encodes one picture, every later one four
  frames, and the two kinds have very different statistics. A window that starts mid-clip would
  put a four-frame latent where the model expects the picture latent; with the anchor every
  window is a valid Wan clip (picture, then video), and it sees the clip's first frame, which
  ties its colours, background and object to it. Off: plain windows as ComfyUI places them.
* **Placement** (:func:`window_starts`): over the frames after the anchor, windows of
  ``length − 1`` frames (``length`` without the anchor), each starting ``length − 1 − overlap``
  after the previous one; the last one is moved back so it ends on the clip's last frame (every
  window has the full length, every frame is covered).
* **Blending** (:func:`frame_weights`): each window's prediction is weighted per frame,
  ``uniform`` (all 1) or ``pyramid`` (1 at the window's edges rising linearly to its middle), and
  each frame's weights are normalised to sum to 1 over the windows holding it. Frames in every
  window (the anchor, VACE reference frames) take the plain mean.
* **One noise schedule**: the windows are parts of one model evaluation of one solver step, so all
  of them see the same sigma and the solver (UniPC / DPM++ history included) runs once on the
  whole latent: no window is denoised on its own schedule. The windows wrap the *guided*
  velocity (cond and uncond of a window together), so drift control acts on what the solver uses.

Conditioning is cut the same way: a tensor input with a frame axis (I2V's ``y``, VACE contexts,
per-frame or per-token timesteps) is sliced to the window's frames. The I2V first-frame condition
(mask and image latent of frame 0) therefore reaches each window through its anchor frame, the
only place that holds it; without the anchor only the first window sees it and later windows get
the "nothing known" part of the condition. TI2V's clean first frame likewise. Text and CLIP image
embeddings go to every window. VACE reference frames (``vace_trim_frames``) are pinned: every
window holds them in front of its anchor and own frames.

**Drift control** (ours, off by default). Later windows can wander in colour and brightness.
Latent channels of the Wan VAEs carry colour and brightness largely as per-channel offsets and
scales, so at each step, with the step's sigma ``σ``, each window's guided velocity becomes its
denoised prediction ``x0 = x − σ·v``, and per batch item and latent channel its mean and standard
deviation over the window's own frames (anchor and pinned frames left out) are matched to those
of the first window's prediction at the same step (std ratio clamped to [1/2, 2] so a flat
channel cannot blow up); ``v = (x − x0)/σ`` then goes back to the solver. Whole-window
statistics of a scene are robust to where the object sits; an earlier version matched each
window to its predecessor over the shared frames only, and on the nano models that made colours
worse, not better: two windows mostly disagree there about the object's position, and 2 latent
frames are a small sample (docs/long_video.md, bench/results/context_windows.md). The price:
drift control also holds back a deliberate change of overall colour over the clip (a fade, a
scene cut), and a change of the statistics that is content (an object leaving the frame). On
the nano models, with the anchor frame, windows kept their colours without it (object ΔE
5.9-6.3 between windows, 0.8-3.8 for five prompts of six) and drift control added error
(9.5-10.3), so it is off by default: a remedy for models that do drift, measured here only
where they do not.
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

    ``length``: frames per model call (the anchor frame included); ``overlap``: frames shared by
    neighbouring windows; ``blend``: "pyramid" or "uniform"; ``drift_control``: match each
    window's colour statistics to the first window's; ``anchor``: latent frame 0 in every window.
    """

    length: int
    overlap: int
    blend: str = "pyramid"
    drift_control: bool = False
    anchor: bool = True

    def __post_init__(self) -> None:
        if self.length < 1 + int(self.anchor):
            raise ValueError(f"context windows: window length must be >= {1 + int(self.anchor)} latent frames "
                             f"{'(the anchor and one more) ' if self.anchor else ''}got {self.length}")
        if not 0 <= self.overlap < self.moving:
            raise ValueError(f"context windows: overlap must be in [0, {self.moving}) latent frames (less than the "
                             f"window{' without its anchor frame' if self.anchor else ''}), got {self.overlap}")
        if self.blend not in BLENDS:
            raise ValueError(f"context windows: blend {self.blend!r} is not one of {', '.join(BLENDS)}")

    @property
    def moving(self) -> int:
        """Frames of a window that slide along the clip (the window less its anchor frame)."""
        return self.length - int(self.anchor)

    @classmethod
    def from_pixel_frames(cls, window: int, overlap: int, blend: str = "pyramid", drift_control: bool = False,
                          anchor: bool = True, where: str = "context windows") -> "ContextWindows":
        """From a window and overlap in pixel frames (the node's widgets), with errors naming them."""
        if window < 5:
            raise ValueError(f"{where}: context_window must be 0 (off) or at least 5 pixel frames, got {window}")
        if not 0 <= overlap < window:
            raise ValueError(f"{where}: context_overlap must be in [0, context_window = {window}) pixel frames, "
                             f"got {overlap}")
        length, shared = latent_window(window), latent_overlap(overlap)
        if shared >= length - int(anchor):
            raise ValueError(f"{where}: context_overlap {overlap} pixel frames is {shared} latent frames, which "
                             f"leaves no new frame in a window of {window} pixel frames ({length} latent"
                             f"{', one of them the anchor' if anchor else ''}); use a smaller overlap")
        return cls(length, shared, blend, drift_control, anchor)

    def covers(self, frames: int) -> bool:
        """True when one window holds the whole clip (the model then runs unchanged)."""
        return frames <= self.length

    def describe(self, frames: int) -> str:
        """What these windows do to a clip of ``frames`` latent frames, for logs and the node."""
        if self.covers(frames):
            return f"context windows off: {frames} latent frames fit one window of {self.length}"
        starts, _ = self.plan(frames)
        return (f"{len(starts)} context windows of {self.length} latent frames (overlap {self.overlap}, "
                f"{self.blend}, drift control {'on' if self.drift_control else 'off'}, "
                f"{'anchored to frame 0' if self.anchor else 'no anchor'})")

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
        """Window starts and blend weights over the sliding part of a clip of ``frames`` frames
        (all but the anchor frame), counted from the first frame after the anchor."""
        sliding = frames - int(self.anchor)
        starts = window_starts(sliding, self.moving, self.overlap)
        return starts, frame_weights(sliding, starts, self.moving, self.blend)

    def _run(self, model: ModelFn, sigma: float, pinned: int, x: torch.Tensor, t: torch.Tensor,
             context: torch.Tensor, extras: dict) -> torch.Tensor:
        frames = x.shape[2]
        starts, weights = self.plan(frames - pinned)
        pinned += int(self.anchor)                             # the anchor frame is in every window
        weights = weights.to(device=x.device, dtype=torch.float32)
        drift = self.drift_control and sigma > 0.0
        x32 = x.float()
        blended: Optional[torch.Tensor] = None
        reference: Optional[torch.Tensor] = None              # the first window's x0 (drift control)
        for k, start in enumerate(starts):
            index = window_index(start, self.moving, pinned, x.device)
            out = model(x.index_select(2, index), _slice_time(t, index, frames), context,
                        **{name: _slice_frames(value, index, frames) for name, value in extras.items()})
            if blended is None:
                blended = torch.zeros(out.shape[:2] + x.shape[2:], device=x.device, dtype=torch.float32)
            pred = out.float()
            if drift:
                x_window = x32.index_select(2, index)
                x0 = x_window - sigma * pred
                own = x0[:, :, pinned:]                          # the window's sliding frames
                if reference is None:
                    reference = own
                else:
                    pred = (x_window - match_channel_stats(x0, own, reference)) / sigma
            w = torch.full((frames,), 1.0 / len(starts), device=x.device)   # pinned: a plain mean
            w[pinned:] = weights[k]
            blended.index_add_(2, index, pred * w.index_select(0, index).view(1, 1, -1, 1, 1))
        return blended.to(out.dtype)


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
