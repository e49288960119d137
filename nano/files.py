"""Names and places of the shipped WanNano model files (ComfyUI folder layout under ``nano/models``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
"""``diffusion_models/``, ``vae/``, ``text_encoders/`` and ``loras/`` below it, as in ComfyUI."""


@dataclass(frozen=True)
class NanoFiles:
    t2v_high: str = "wan2.2_nano_t2v_high_noise.safetensors"
    t2v_low: str = "wan2.2_nano_t2v_low_noise.safetensors"
    i2v_high: str = "wan2.2_nano_i2v_high_noise.safetensors"
    i2v_low: str = "wan2.2_nano_i2v_low_noise.safetensors"
    vace: str = "wan2.1_nano_vace.safetensors"
    vae: str = "wan2.1_nano_vae.safetensors"
    umt5: str = "umt5_nano.safetensors"
    lora_outline: str = "wan_nano_outline_lora.safetensors"
    lora_night: str = "wan_nano_night_lora.safetensors"

    def folder_of(self, name: str) -> str:
        """The ComfyUI models folder a file belongs in."""
        if name == self.vae:
            return "vae"
        if name == self.umt5:
            return "text_encoders"
        if name in (self.lora_outline, self.lora_night):
            return "loras"
        return "diffusion_models"

    def path(self, name: str) -> Path:
        return MODELS_DIR / self.folder_of(name) / name


NANO = NanoFiles()
