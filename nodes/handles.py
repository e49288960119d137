"""What travels on the WANFLOW_ sockets between nodes: loaded models plus what the UI chose."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn as nn

from ..model_loaders.detect import WanVariant
from ..samplers.expert_residency import Parking


@dataclass
class ModelHandle:
    """WANFLOW_MODEL: a loaded Wan DiT, its detected variant and the attention backend to run it with."""

    model: nn.Module
    variant: WanVariant
    attention: str = "sdpa"
    file_format: str = ""
    path: str = ""
    # set when its weights wait on disk ("reload from disk": model_loaders.parking.DiskBacked) or
    # when ComfyUI places it (a core MODEL: nodes.comfy_models.ComfyPlacement)
    parking: Optional[Parking] = None

    @contextlib.contextmanager
    def weights_loaded(self, device: torch.device) -> Iterator[nn.Module]:
        """The model with its weights present (read back from the file first if they wait there)."""
        if self.parking is None:
            yield self.model
            return
        try:
            yield self.parking.restore(device)
        finally:
            self.parking.park()

    def describe(self) -> str:
        details = ", ".join(part for part in (self.file_format, f"attention {self.attention}") if part)
        return f"{self.variant.name} ({details})"


@dataclass
class TextEncoderHandle:
    """WANFLOW_TEXT_ENCODER: the umT5 encoder, its tokenizer, and whether it stays on the CPU."""

    encoder: nn.Module
    tokenizer: object  # wan.tokenizer.UMT5Tokenizer
    on_cpu: bool = False
    path: str = ""


@dataclass
class ClipVisionHandle:
    """WANFLOW_CLIP_VISION: the CLIP ViT-H/14 image tower used by Wan 2.1 I2V and FLF2V."""

    tower: nn.Module
    path: str = ""
