"""The Wan DiT's configuration, and the configurations of every released variant.

:class:`WanDiTConfig` holds the official ``WanModel`` arguments; ``PRESETS`` names the released
models (Wan 2.1 1.3B/14B, the 2.2 A14B experts, TI2V-5B, VACE and the Fun variants), and
``TINY_PRESETS`` tiny random-weight versions of each for tests and CPU smoke runs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

MODEL_TYPES = ("t2v", "i2v", "flf2v", "vace", "ti2v")


@dataclass(frozen=True)
class WanDiTConfig:
    """Architecture hyper-parameters; names follow the official ``WanModel`` arguments."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    model_type: str = "t2v"
    has_image_input: bool = False       # Wan 2.1 I2V / FLF2V CLIP branch (img_emb, k_img, v_img)
    clip_dim: int = 1280                # width of the CLIP vision tokens fed to img_emb
    flf_pos_len: Optional[int] = None   # FLF2V learned position table length (514)
    vace_layers: tuple[int, ...] = ()   # main blocks that receive VACE hints (VACE only)
    vace_in_dim: int = 96
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        def bad(what: str) -> ValueError:
            return ValueError(f"WanDiTConfig: {what}")

        if self.model_type not in MODEL_TYPES:
            raise bad(f"model_type={self.model_type!r}; expected one of {MODEL_TYPES}")
        if self.dim % self.num_heads:
            raise bad(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        head_dim = self.dim // self.num_heads
        if head_dim % 2 or head_dim // 6 < 1:
            raise bad(f"head_dim={head_dim} must be even and >= 6 for the 3-axis RoPE split")
        if len(self.patch_size) != 3:
            raise bad(f"patch_size={self.patch_size}; expected 3 values (t, h, w)")
        if self.flf_pos_len is not None and not self.has_image_input:
            raise bad("flf_pos_len needs has_image_input=True (FLF2V has the CLIP branch)")
        if self.model_type == "flf2v" and self.flf_pos_len is None:
            raise bad("model_type='flf2v' needs flf_pos_len (514 for the official model)")
        if (self.model_type == "vace") != bool(self.vace_layers):
            raise bad(f"vace_layers={self.vace_layers} must be non-empty exactly when "
                      f"model_type='vace' (got model_type={self.model_type!r})")
        layers = list(self.vace_layers)
        if layers and (layers != sorted(set(layers)) or layers[0] != 0
                       or layers[-1] >= self.num_layers):
            raise bad(f"vace_layers={self.vace_layers} must be strictly increasing block "
                      f"indices in [0, {self.num_layers}) starting at 0 (the first VACE block "
                      "owns before_proj)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_axes(self) -> tuple[int, int, int]:
        """Channels per head given to the (frame, height, width) RoPE axes: 44/42/42 for 128."""
        d = self.head_dim
        return d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)


_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
_1_3B = dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)

WAN21_T2V_1_3B = WanDiTConfig(**_1_3B, model_type="t2v")
WAN21_T2V_14B = WanDiTConfig(**_14B, model_type="t2v")
WAN21_I2V_14B = WanDiTConfig(**_14B, in_dim=36, model_type="i2v", has_image_input=True)
WAN21_FLF2V_14B = WanDiTConfig(**_14B, in_dim=36, model_type="flf2v", has_image_input=True,
                               flf_pos_len=514)
WAN21_VACE_1_3B = WanDiTConfig(**_1_3B, model_type="vace", vace_layers=tuple(range(0, 30, 2)))
WAN21_VACE_14B = WanDiTConfig(**_14B, model_type="vace", vace_layers=tuple(range(0, 40, 5)))
WAN22_T2V_A14B = WanDiTConfig(**_14B, model_type="t2v")              # each of the two experts
WAN22_I2V_A14B = WanDiTConfig(**_14B, in_dim=36, model_type="i2v")   # no CLIP branch
# Wan2.2-VACE-Fun-A14B (Alibaba PAI), each expert: VACE blocks after every 5th of the T2V-A14B
# expert's 40 blocks, 96 VACE input channels: the Wan 2.1 VACE-14B layout (diffusers'
# convert_wan_to_diffusers "Wan2.2-VACE-Fun-14B" entry).
WAN22_VACE_FUN_A14B = WanDiTConfig(**_14B, model_type="vace", vace_layers=tuple(range(0, 40, 5)))
WAN22_TI2V_5B = WanDiTConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30,
                             in_dim=48, out_dim=48, model_type="ti2v")
# Wan2.2-Fun-5B-InP (Alibaba PAI): the TI2V-5B body reading a start/end-frame condition beside the
# noise, 100 = 48 noise + 4 mask + 48 image-latent channels (the Wan 2.2 VAE's 48-channel latent).
WAN22_FUN_5B_INP = replace(WAN22_TI2V_5B, in_dim=100, model_type="i2v")

PRESETS: dict[str, WanDiTConfig] = {
    "wan2.1-t2v-1.3b": WAN21_T2V_1_3B,
    "wan2.1-t2v-14b": WAN21_T2V_14B,
    "wan2.1-i2v-14b": WAN21_I2V_14B,
    "wan2.1-flf2v-14b": WAN21_FLF2V_14B,
    "wan2.1-vace-1.3b": WAN21_VACE_1_3B,
    "wan2.1-vace-14b": WAN21_VACE_14B,
    "wan2.2-t2v-a14b": WAN22_T2V_A14B,
    "wan2.2-i2v-a14b": WAN22_I2V_A14B,
    "wan2.2-ti2v-5b": WAN22_TI2V_5B,
    "wan2.2-fun-5b-inp": WAN22_FUN_5B_INP,
    "wan2.2-vace-fun-a14b": WAN22_VACE_FUN_A14B,
}

# Tiny random-weight versions of every variant for tests and CPU smoke runs (head_dim 16: RoPE
# axes 8/4/4). text_len stays 512 because diffusers hard-codes "last 512 context tokens = text".
_TINY = dict(dim=48, ffn_dim=64, num_heads=3, num_layers=3, text_dim=32, clip_dim=40)
TINY_PRESETS: dict[str, WanDiTConfig] = {
    "t2v": WanDiTConfig(**_TINY, model_type="t2v"),
    "i2v": WanDiTConfig(**_TINY, in_dim=36, model_type="i2v", has_image_input=True),
    "flf2v": WanDiTConfig(**_TINY, in_dim=36, model_type="flf2v", has_image_input=True,
                          flf_pos_len=10),
    "i2v-2.2": WanDiTConfig(**_TINY, in_dim=36, model_type="i2v"),
    "ti2v": WanDiTConfig(**_TINY, in_dim=48, out_dim=48, model_type="ti2v"),
    "fun-5b-inp": WanDiTConfig(**_TINY, in_dim=100, out_dim=48, model_type="i2v"),
    "vace": WanDiTConfig(**_TINY, model_type="vace", vace_layers=(0, 2), vace_in_dim=24),
}
