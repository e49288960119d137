"""What the sampler hands to the DiT besides the noisy latent, for every Wan task.

:class:`WanConditioning` carries the inputs of the DiT forward contract (docs/DEVELOPING.md):

| Task            | Fields used                                                        |
|-----------------|--------------------------------------------------------------------|
| T2V             | ``context`` (+ ``negative_context`` for CFG)                       |
| 2.1 I2V / FLF2V | ``y`` (4 mask + 16 image-latent channels) and ``clip_fea``         |
| 2.2 I2V, Fun-InP| ``y`` only (no CLIP; start and/or end frame)                       |
| TI2V-5B I2V     | ``first_frame``: clean first latent frame(s); per-token timesteps  |
| VACE            | ``vace_context``, ``vace_strength``, ``vace_trim_frames``          |
| Phantom S2V     | ``subjects`` (picture latents after the video), ``subject_cfg``    |

``pad_context``: True for our text encoder's output (the DiT zero-pads to 512 tokens, as the
official code does); False for text from ComfyUI's core nodes, which the DiT takes unpadded.

All latents are in the sampler's normalised latent space (``(z − mean)/std``); converting
ComfyUI's raw LATENT is the caller's job (``wan/latent_stats.py``).

The builders below (:func:`i2v_mask`, :func:`i2v_pixel_video`, :func:`i2v_condition`) produce
the I2V concat condition the way the official code does; the VAE encode in between belongs to the
caller, so this module does not depend on a VAE implementation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

VaceContexts = Union[torch.Tensor, Sequence[torch.Tensor], None]

VAE_TEMPORAL_STRIDE = 4


@dataclass
class WanConditioning:
    """Model inputs shared by every step; see the module docstring for which task uses what."""

    context: torch.Tensor
    negative_context: Optional[torch.Tensor] = None
    y: Optional[torch.Tensor] = None
    clip_fea: Optional[torch.Tensor] = None
    vace_context: VaceContexts = None          # one [B, 96, F, H, W] tensor or a list (stacked)
    vace_strength: Union[float, Sequence[float]] = 1.0
    vace_trim_frames: int = 0
    first_frame: Optional[torch.Tensor] = None
    subjects: Optional[torch.Tensor] = None    # Phantom: [B, C, N, H, W], one frame per picture
    subject_cfg: float = 5.0                   # Phantom guidance toward the pictures (guide_scale_img)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    pad_context: bool = True                   # False: ComfyUI core text, taken at its own length

    def validate(self, latent: torch.Tensor) -> None:
        """Fail early, naming the field, when a condition does not fit the latent ``[B,C,F,H,W]``."""
        if latent.ndim != 5:
            raise ValueError(f"latent must be [B, C, F, H, W], got shape {tuple(latent.shape)}")
        batch, _, frames, height, width = latent.shape
        _expect_ndim("context", self.context, 3)
        _expect_batch("context", self.context, batch)
        if self.negative_context is not None:
            _expect_ndim("negative_context", self.negative_context, 3)
            _expect_batch("negative_context", self.negative_context, batch)
            if self.negative_context.shape[2] != self.context.shape[2]:
                raise ValueError(f"negative_context width {self.negative_context.shape[2]} != "
                                 f"context width {self.context.shape[2]}")
        for name, value in [("y", self.y)] + [
                (f"vace_context[{i}]", v) for i, v in enumerate(self.vace_contexts())]:
            if value is not None:
                _expect_ndim(name, value, 5)
                _expect_batch(name, value, batch)
                if tuple(value.shape[-3:]) != (frames, height, width):
                    raise ValueError(f"{name} has frames/height/width {tuple(value.shape[-3:])}, "
                                     f"expected the latent's {(frames, height, width)}")
        if not isinstance(self.vace_strength, (int, float)) and \
                len(list(self.vace_strength)) != len(self.vace_contexts()):
            raise ValueError(f"vace_strength has {len(list(self.vace_strength))} entries for "
                             f"{len(self.vace_contexts())} VACE contexts")
        if self.clip_fea is not None:
            _expect_ndim("clip_fea", self.clip_fea, 3)
            _expect_batch("clip_fea", self.clip_fea, batch)
        if self.first_frame is not None:
            _expect_ndim("first_frame", self.first_frame, 5)
            known = self.first_frame.shape[2]
            expected = (latent.shape[1], height, width)
            if (self.first_frame.shape[1], *self.first_frame.shape[3:]) != expected or not 1 <= known <= frames:
                raise ValueError(f"first_frame must be [B, C, K, H, W] with C, H, W = {expected} and 1 <= K <= "
                                 f"{frames} latent frames, got {tuple(self.first_frame.shape)}")
        if self.subjects is not None:
            self._validate_subjects(latent)
        if not 0 <= self.vace_trim_frames < frames:
            raise ValueError(f"vace_trim_frames must be in [0, {frames}), got {self.vace_trim_frames}")
        if self.vace_trim_frames and self.vace_context is None:
            raise ValueError("vace_trim_frames is set but vace_context is None")

    def _validate_subjects(self, latent: torch.Tensor) -> None:
        _expect_ndim("subjects", self.subjects, 5)
        _expect_batch("subjects", self.subjects, latent.shape[0])
        expected = (latent.shape[1], latent.shape[3], latent.shape[4])
        found = (self.subjects.shape[1], self.subjects.shape[3], self.subjects.shape[4])
        if found != expected:
            raise ValueError(f"subjects has channels/height/width {found}, expected the latent's {expected}")
        joined = [name for name, value in (("y", self.y), ("vace_context", self.vace_context),
                                           ("first_frame", self.first_frame)) if value is not None]
        if joined:
            raise ValueError(f"subjects (Phantom subject-to-video, a text-to-video model) cannot be combined "
                             f"with {', '.join(joined)}")

    def vace_contexts(self) -> list[torch.Tensor]:
        """The VACE contexts as a list (empty without VACE)."""
        if self.vace_context is None:
            return []
        if isinstance(self.vace_context, torch.Tensor):
            return [self.vace_context]
        return list(self.vace_context)

    def to(self, device: Union[torch.device, str]) -> "WanConditioning":
        """A copy with every tensor on ``device`` (dtypes kept)."""
        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device)
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
                return [v.to(device) for v in value]
            return value

        return WanConditioning(**{name: move(value) for name, value in self.__dict__.items()})

    def model_extras(self) -> dict:
        """Keyword inputs of the DiT call shared by cond and uncond passes (None = not used)."""
        extras: dict = {}
        if self.y is not None:
            extras["y"] = self.y
        if self.clip_fea is not None:
            extras["clip_fea"] = self.clip_fea
        if self.vace_context is not None:
            extras["vace_context"] = self.vace_context
            extras["vace_scale"] = self.vace_strength
        if not self.pad_context:
            extras["pad_context"] = False
        return extras

    def can_batch_guidance(self) -> bool:
        """Whether cond and uncond may share one forward: batching pads the shorter context with
        zero rows, which only leaves the result unchanged when the model pads anyway."""
        return (self.pad_context or self.negative_context is None
                or self.negative_context.shape[1] == self.context.shape[1])

    # --- TI2V-5B: clean first frame(s) with per-token timesteps -----------------------------

    def frame_mask(self, latent: torch.Tensor) -> torch.Tensor:
        """``[1, 1, F, H, W]``: 0 on the known first latent frame(s), 1 where the model denoises."""
        mask = torch.ones(1, 1, *latent.shape[2:], dtype=latent.dtype, device=latent.device)
        mask[:, :, :self.first_frame.shape[2] if self.first_frame is not None else 1] = 0
        return mask

    def impose_first_frame(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with its first latent frame(s) replaced by the clean ``first_frame`` (TI2V).

        The sampler applies it to every model input, to each x0 preview and to the result. The
        official code instead overwrites the latent after each solver step; the solvers act
        element-wise and the model always sees the clean frame, so every other frame follows
        the same trajectory either way (as diffusers' ``expand_timesteps`` path shows).
        """
        if self.first_frame is None:
            return x
        known = self.first_frame.shape[2]
        clean = self.first_frame.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1, -1, -1)
        return torch.cat([clean, x[:, :, known:]], dim=2)

    def model_timestep(self, t: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """The DiT's ``t``: ``[B]``, or ``[B, seq_len]`` per token with t = 0 on the first frame."""
        batch = latent.shape[0]
        if self.first_frame is None:
            return t.reshape(1).expand(batch).to(latent.device)
        _, ph, pw = self.patch_size
        tokens = self.frame_mask(latent)[0, 0][:, ::ph, ::pw]
        per_token = (tokens * t.to(latent.device)).flatten()
        return per_token.unsqueeze(0).expand(batch, -1)

    def trim(self, latent: torch.Tensor) -> torch.Tensor:
        """Drop the VACE reference frames prepended in time (``vace_trim_frames``)."""
        return latent[:, :, self.vace_trim_frames:] if self.vace_trim_frames else latent


def _expect_ndim(name: str, value: torch.Tensor, ndim: int) -> None:
    if not isinstance(value, torch.Tensor) or value.ndim != ndim:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a {ndim}-D tensor, got {shape}")


def _expect_batch(name: str, value: torch.Tensor, batch: int) -> None:
    if value.shape[0] != batch:
        raise ValueError(f"{name} has batch {value.shape[0]}, expected the latent's batch {batch}")


# --- I2V concat condition (official Wan 2.1 / 2.2 I2V and FLF2V) ------------------------------

def i2v_mask(num_frames: int, latent_height: int, latent_width: int, *, batch: int = 1,
             start_frames: int = 1, end_frames: int = 0) -> torch.Tensor:
    """The 4-channel "known frame" mask ``[B, 4, T_lat, h, w]`` of the I2V condition (1 = known).

    The first ``start_frames`` pixel frames (one start image, or several to continue a clip) and
    the last ``end_frames`` (FLF2V, or an end image alone) are known; frame 0 is repeated to 4 so
    the pixel mask folds into 4 channels per latent frame: latent frame 0 is all ones with a start
    image, all zeros without one.
    """
    if num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL_STRIDE:
        raise ValueError(f"i2v_mask: num_frames must be 4n+1, got {num_frames}")
    if not (0 <= start_frames <= num_frames and 0 <= end_frames <= num_frames):
        raise ValueError(f"i2v_mask: start_frames={start_frames} and end_frames={end_frames} must each be "
                         f"within the clip's {num_frames} frames")
    mask = torch.zeros(batch, 1, num_frames, latent_height, latent_width)
    mask[:, :, :start_frames] = 1
    if end_frames:
        mask[:, :, num_frames - end_frames:] = 1
    first = mask[:, :, :1].repeat_interleave(VAE_TEMPORAL_STRIDE, dim=2)
    mask = torch.cat([first, mask[:, :, 1:]], dim=2)
    mask = mask.view(batch, -1, VAE_TEMPORAL_STRIDE, latent_height, latent_width)
    return mask.transpose(1, 2)


def _as_frames(images: Optional[torch.Tensor], name: str) -> Optional[torch.Tensor]:
    """``[B, 3, H, W]`` (one picture) or ``[B, 3, N, H, W]`` (N frames) as ``[B, 3, N, H, W]``."""
    if images is None:
        return None
    if images.ndim == 4:
        images = images.unsqueeze(2)
    if images.ndim != 5 or images.shape[1] != 3 or images.shape[2] < 1:
        raise ValueError(f"{name} must be [B, 3, H, W] or [B, 3, N, H, W], got "
                         f"{tuple(images.shape)}")
    return images


def i2v_pixel_video(image: Optional[torch.Tensor], num_frames: int,
                    last_image: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The pixel clip the VAE encodes for I2V: the image(s), then zeros (mid-grey), ``[B,3,F,H,W]``.

    ``image`` is ``[B, 3, H, W]`` in [−1, 1], already at the output size, or ``[B, 3, N, H, W]``
    for N start frames. With ``last_image`` (FLF2V; likewise one picture or N frames) the clip
    ends with it, and it wins where the two overlap; with ``last_image`` alone (``image`` None)
    the clip is mid-grey up to it, as ComfyUI's WanFirstLastFrameToVideo builds it.
    """
    start, end = _as_frames(image, "image"), _as_frames(last_image, "last_image")
    reference = start if start is not None else end
    if reference is None:
        raise ValueError("i2v_pixel_video: give an image, a last_image, or both")
    if start is not None and end is not None and (end.shape[:2], end.shape[3:]) != (start.shape[:2], start.shape[3:]):
        raise ValueError(f"i2v_pixel_video: last_image {tuple(last_image.shape)} must match image "
                         f"{tuple(image.shape)} in batch and size")
    for name, frames in (("image", start), ("last_image", end)):
        if frames is not None and frames.shape[2] > num_frames:
            raise ValueError(f"i2v_pixel_video: {name} has {frames.shape[2]} frames, more than the clip's "
                             f"{num_frames}")
    video = reference.new_zeros(reference.shape[0], 3, num_frames, *reference.shape[3:])
    if start is not None:
        video[:, :, :start.shape[2]] = start
    if end is not None:
        video[:, :, num_frames - end.shape[2]:] = end
    return video


def i2v_condition(image_latent: torch.Tensor, num_frames: int, *, start_frames: int = 1,
                  end_frames: int = 0) -> torch.Tensor:
    """``y = [mask(4) | image latent]`` for the DiT (``[B, 4 + C, T_lat, h, w]``).

    ``image_latent`` is the normalised VAE latent of :func:`i2v_pixel_video`.
    """
    batch, _, frames, height, width = image_latent.shape
    mask = i2v_mask(num_frames, height, width, batch=batch, start_frames=start_frames, end_frames=end_frames)
    if mask.shape[2] != frames:
        raise ValueError(f"i2v_condition: image latent has {frames} frames, {num_frames} pixel "
                         f"frames give {mask.shape[2]}")
    return torch.cat([mask.to(image_latent), image_latent], dim=1)


# Encoder: pixels [B, 3, F, H, W] in [-1, 1] -> *normalised* latent (VAE encode + normalize).
LatentEncoder = Callable[[torch.Tensor], torch.Tensor]


def encode_i2v_condition(encode: LatentEncoder, image: Optional[torch.Tensor], num_frames: int,
                         last_image: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The full I2V / FLF2V ``y``: encode the image clip, then prepend the 4-channel mask.

    Used for Wan 2.1 I2V (plus ``clip_fea``), Wan 2.2 I2V-A14B and the Fun-InP models (A14B and
    5B; no CLIP; start image, end image or both) and FLF2V. ``image`` and ``last_image`` are one
    picture ``[B, 3, H, W]`` or N frames ``[B, 3, N, H, W]``.
    """
    latent = encode(i2v_pixel_video(image, num_frames, last_image))
    return i2v_condition(latent, num_frames, start_frames=_frame_count(image),
                         end_frames=_frame_count(last_image))


def _frame_count(images: Optional[torch.Tensor]) -> int:
    return 0 if images is None else (1 if images.ndim == 4 else images.shape[2])


def encode_first_frame(encode: LatentEncoder, image: torch.Tensor) -> torch.Tensor:
    """TI2V-5B's clean first-frame latent ``[B, C, K, h, w]`` from one image ``[B, 3, H, W]`` (K = 1) or
    N start frames ``[B, 3, N, H, W]`` (K = the latent frames they encode to, as ComfyUI's
    Wan22ImageToVideoLatent keeps them)."""
    frames = _as_frames(image, "image")
    return encode(frames)
