"""Names and places of the shipped WanNano model files (ComfyUI folder layout under ``nano/models``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
"""``diffusion_models/``, ``vae/``, ``text_encoders/`` and ``loras/`` below it, as in ComfyUI."""


LORA_STYLES = ("outline", "night")
"""The style LoRAs: ``outline`` draws shapes hollow, ``night`` paints the background dark blue."""


@dataclass(frozen=True)
class NanoFiles:
    t2v_high: str = "wan2.2_nano_t2v_high_noise.safetensors"
    t2v_low: str = "wan2.2_nano_t2v_low_noise.safetensors"
    i2v_high: str = "wan2.2_nano_i2v_high_noise.safetensors"
    i2v_low: str = "wan2.2_nano_i2v_low_noise.safetensors"
    vace: str = "wan2.1_nano_vace.safetensors"
    vae: str = "wan2.1_nano_vae.safetensors"
    umt5: str = "umt5_nano.safetensors"

    def lora(self, style: str, expert: str) -> str:
        """A style LoRA file: ``style`` in ``LORA_STYLES``, ``expert`` "high" or "low" (Wan 2.2
        LoRAs come as a pair, one per expert)."""
        if style not in LORA_STYLES or expert not in ("high", "low"):
            raise ValueError(f"no nano LoRA {style!r}/{expert!r}; styles are {LORA_STYLES}, experts high/low")
        return f"{self.lora_stem(style)}_{expert}_noise.safetensors"

    @staticmethod
    def lora_stem(style: str) -> str:
        """The pair's common name (what the trainer's ``save_pair`` extends with the expert)."""
        return f"wan_nano_{style}_lora"

    def folder_of(self, name: str) -> str:
        """The ComfyUI models folder a file belongs in."""
        if name == self.vae:
            return "vae"
        if name == self.umt5:
            return "text_encoders"
        if name.startswith("wan_nano_") and "_lora" in name:
            return "loras"
        return "diffusion_models"

    def path(self, name: str, root: Path = MODELS_DIR) -> Path:
        """Where ``name`` lies in a models folder laid out as ComfyUI's (default: the pack's)."""
        return root / self.folder_of(name) / name


NANO = NanoFiles()
