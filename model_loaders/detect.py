"""Tell what a weights file holds, from its key names and shapes alone (no tensor data is read).

Two questions are answered here:

* :func:`classify` - what kind of model is this file (Wan DiT, Wan VAE, umT5, CLIP vision, LoRA,
  an SD/SDXL/Flux checkpoint, ...) and which loader takes it. Used to give a helpful error when a
  user feeds the wrong file to a loader.
* :func:`detect_dit_variant` - for a Wan DiT with official key names, which variant it is (family,
  task, size, high/low expert), the architecture to build, and the official default settings.

The shape rules follow wan-architecture.md section 2. High and low experts of Wan 2.2 A14B, and
Wan 2.1 vs 2.2 T2V-14B, have identical shapes: only the file name can tell them apart.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

from ..wan.dit_config import WanDiTConfig
from .errors import UnsupportedModelError, WrongModelError

Shapes = Mapping[str, tuple[int, ...]]

# --------------------------------------------------------------------------- file kinds


@dataclass(frozen=True)
class FileKind:
    """What a file looks like, and where it should go."""

    kind: str         # short id, e.g. "wan_dit", "wan_vae_2.1", "umt5", "lora", "sdxl"
    description: str  # for people, e.g. "a Wan 2.1 VAE"
    loader: str       # which loader (and ComfyUI models folder) takes it


LOADERS = {
    "dit": "the Wan model loader (wanflow.model_loaders.dit_loader.load_dit; ComfyUI folder "
           "models/diffusion_models)",
    "vae": "the Wan VAE loader (wanflow.model_loaders.vae_loader.load_vae; ComfyUI folder models/vae)",
    "text": "the umT5 text-encoder loader (wanflow.model_loaders.text_encoder_loader."
            "load_text_encoder; ComfyUI folder models/text_encoders)",
    "clip": "the CLIP vision loader (wanflow.model_loaders.clip_vision_loader.load_clip_vision; "
            "ComfyUI folder models/clip_vision)",
    "lora": "a LoRA loader (ComfyUI folder models/loras)",
    "none": "no WanFlow loader (it is not a Wan model file)",
}

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.model.", "net.", "transformer.",
             "module.", "first_stage_model.", "vae.", "vision_model.", "visual.")

_LORA_MARKERS = (".lora_down.weight", ".lora_up.weight", ".lora_A.weight", ".lora_B.weight",
                 ".lora_A.default.weight", ".lora_B.default.weight", ".hada_w1_a", ".lokr_w1",
                 ".lokr_w1_a", ".diff_b", ".diff_m", "lora_unet_", "lycoris_", ".lora.down.weight")


def _has(keys: set[str], *names: str) -> bool:
    """True when some key ends with every one of ``names`` (prefixes are ignored)."""
    return all(any(k == n or k.endswith("." + n) or k.endswith(n) for k in keys) for n in names)


def _find(shapes: Shapes, name: str) -> Optional[tuple[int, ...]]:
    """Shape of the key equal to ``name`` or ending with ``.name`` (any prefix)."""
    if name in shapes:
        return shapes[name]
    for key, shape in shapes.items():
        if key.endswith("." + name):
            return shape
    return None


def classify(shapes: Shapes) -> FileKind:
    """Name what the file looks like from its keys (prefixes such as ComfyUI's are ignored)."""
    keys = set(shapes)
    if any(any(marker in k for marker in _LORA_MARKERS) for k in keys):
        return FileKind("lora", "a LoRA (low-rank adapter) file", LOADERS["lora"])
    if _has(keys, "head.modulation") and _has(keys, "patch_embedding.weight"):
        return FileKind("wan_dit", "a Wan diffusion model (DiT)", LOADERS["dit"])
    if _has(keys, "condition_embedder.time_proj.weight") or _has(keys, "blocks.0.attn1.to_q.weight"):
        return FileKind("wan_dit_diffusers", "a Wan diffusion model (DiT) in diffusers format",
                        LOADERS["dit"])
    if _has(keys, "vace_patch_embedding.weight"):
        return FileKind("wan_vace_module", "a Wan VACE add-on module without its base model "
                        "(kijai's *VACE_module* files)", "no WanFlow loader yet: load a full VACE "
                        "model instead (e.g. wan2.1_vace_14B_fp16.safetensors) with the Wan model loader")
    if _has(keys, "decoder.middle.0.residual.0.gamma"):
        v22 = _has(keys, "decoder.upsamples.0.upsamples.0.residual.2.weight")
        return FileKind("wan_vae_2.2" if v22 else "wan_vae_2.1",
                        f"a Wan {'2.2' if v22 else '2.1'} VAE", LOADERS["vae"])
    if _has(keys, "decoder.mid_block.attentions.0.to_qkv.weight") and _has(keys, "quant_conv.weight"):
        z2 = (_find(shapes, "quant_conv.weight") or (0,))[0]
        version = "2.2" if z2 == 96 else "2.1"
        return FileKind(f"wan_vae_{version}", f"a Wan {version} VAE in diffusers format", LOADERS["vae"])
    if _has(keys, "encoder.block.0.layer.0.SelfAttention.q.weight"):
        umt5 = _has(keys, "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight")
        if umt5:
            return FileKind("umt5", "a umT5 text encoder", LOADERS["text"])
        return FileKind("t5", "a T5 text encoder (not umT5: Wan needs umT5-XXL)", LOADERS["none"])
    if _has(keys, "blocks.0.attn.q.weight", "blocks.0.pos_embedding.embedding.weight"):
        return FileKind("umt5", "a umT5 text encoder (official Wan layout)", LOADERS["text"])
    if _has(keys, "encoder.layers.0.self_attn.q_proj.weight") and _has(keys, "embeddings.patch_embedding.weight"):
        return FileKind("clip_vision", "a CLIP vision encoder", LOADERS["clip"])
    if _has(keys, "visual.transformer.0.attn.to_qkv.weight"):
        return FileKind("clip_vision", "an open-clip CLIP model (official Wan layout)", LOADERS["clip"])
    if _has(keys, "input_blocks.0.0.weight"):
        if _has(keys, "label_emb.0.0.weight"):
            return FileKind("sdxl", "a Stable Diffusion XL checkpoint", LOADERS["none"])
        return FileKind("sd1", "a Stable Diffusion 1.x/2.x checkpoint", LOADERS["none"])
    if _has(keys, "joint_blocks.0.x_block.attn.qkv.weight"):
        return FileKind("sd3", "a Stable Diffusion 3 model", LOADERS["none"])
    if _has(keys, "double_blocks.0.img_attn.qkv.weight"):
        return FileKind("flux", "a Flux/HunyuanVideo-style double-stream model", LOADERS["none"])
    if _has(keys, "encoder.down.0.block.0.conv1.weight"):
        return FileKind("sd_vae", "a Stable Diffusion/Flux image VAE", LOADERS["none"])
    return FileKind("unknown", "an unrecognised model", LOADERS["none"])


def wrong_model_error(path: str, shapes: Shapes, expected: str) -> WrongModelError:
    """The error for a file that is not what a loader expects, naming what it looks like."""
    kind = classify(shapes)
    sample = ", ".join(sorted(shapes)[:3])
    return WrongModelError(f"{path}: expected {expected}, but this file looks like "
                           f"{kind.description} (keys such as {sample}); load it with {kind.loader}.")


# --------------------------------------------------------------------------- official defaults


@dataclass(frozen=True)
class WanDefaults:
    """The official generation settings of a variant (wan-architecture.md section 1.2)."""

    vae: str                                  # "2.1" (z16) or "2.2" (z48)
    shift: float
    steps: int
    guide_scale: float                        # the only expert's, or the high-noise expert's
    fps: int
    frames: int
    sizes: tuple[tuple[int, int], ...]        # (width, height); I2V-like tasks use them as max area
    guide_scale_low_noise: Optional[float] = None
    boundary: Optional[float] = None          # MoE switch, as a fraction of 1000 timesteps
    shift_480p: Optional[float] = None        # Wan 2.1 I2V uses 3.0 at 480p sizes
    needs_clip_vision: bool = False
    solver: str = "unipc"


SIZES_480P = ((832, 480), (480, 832))
SIZES_720P = ((1280, 720), (720, 1280))

OFFICIAL_DEFAULTS: dict[tuple[str, str, str], WanDefaults] = {
    ("2.1", "t2v", "1.3B"): WanDefaults("2.1", 5.0, 50, 5.0, 16, 81, SIZES_480P),
    ("2.1", "t2v", "14B"): WanDefaults("2.1", 5.0, 50, 5.0, 16, 81, SIZES_720P + SIZES_480P),
    ("2.1", "i2v", "14B"): WanDefaults("2.1", 5.0, 40, 5.0, 16, 81, SIZES_720P + SIZES_480P,
                                       shift_480p=3.0, needs_clip_vision=True),
    ("2.1", "flf2v", "14B"): WanDefaults("2.1", 16.0, 50, 5.0, 16, 81, SIZES_720P + SIZES_480P,
                                         needs_clip_vision=True),
    ("2.1", "vace", "1.3B"): WanDefaults("2.1", 16.0, 50, 5.0, 16, 81, SIZES_480P),
    ("2.1", "vace", "14B"): WanDefaults("2.1", 16.0, 50, 5.0, 16, 81, SIZES_720P + SIZES_480P),
    ("2.2", "t2v", "14B"): WanDefaults("2.1", 12.0, 40, 4.0, 16, 81, SIZES_720P + SIZES_480P,
                                       guide_scale_low_noise=3.0, boundary=0.875),
    ("2.2", "i2v", "14B"): WanDefaults("2.1", 5.0, 40, 3.5, 16, 81, SIZES_720P + SIZES_480P,
                                       guide_scale_low_noise=3.5, boundary=0.900),
    ("2.2", "ti2v", "5B"): WanDefaults("2.2", 5.0, 50, 5.0, 24, 121, ((1280, 704), (704, 1280))),
}
# WanNano (this pack's own tiny models, nano/models): 64x64, 17 frames, trained at shift 3.
# Guidance is lower than the real models': in the nano VAE's latent a colour lies where another
# would be, further from the background, so guidance that overshoots changes the object's colour
# (red to yellow). T2V 2/2 against 4/3 on 24 prompts: colour 22 against 19, shape 18 against 19;
# R2V 1.5 against 4 on 32 videos: the reference's colour 30 against 19 (docs/nano_findings.md).
NANO_SIZES = ((64, 64),)
NANO_DEFAULTS: dict[tuple[str, str, str], WanDefaults] = {
    ("2.2", "t2v", "nano"): WanDefaults("2.1", 3.0, 20, 2.0, 16, 17, NANO_SIZES,
                                        guide_scale_low_noise=2.0, boundary=0.875),
    ("2.2", "i2v", "nano"): WanDefaults("2.1", 3.0, 20, 3.5, 16, 17, NANO_SIZES,
                                        guide_scale_low_noise=3.5, boundary=0.900),
    ("2.1", "vace", "nano"): WanDefaults("2.1", 3.0, 20, 1.5, 16, 17, NANO_SIZES),
}
# Not Wan-AI releases: expert pairs built on Wan 2.2 T2V-A14B by others. Wan2.2-VACE-Fun-A14B
# (Alibaba PAI; Comfy-Org repackages it as wan2.2_fun_vace_{high,low}_noise_14B): VACE blocks on
# the T2V-A14B experts, the Wan 2.1 VAE, and its authors' settings (VideoX-Fun
# examples/wan2.2_vace_fun: 832x480, 81 frames at 16 fps, 50 steps, UniPC at shift 12, guidance 5
# on both experts, the T2V switch at t = 875).
# Wan2.2-Fun-5B-InP (Alibaba PAI; Comfy-Org repackages it as wan2.2_fun_inpaint_5B_bf16): one
# start/end-frame model on the TI2V-5B body and the Wan 2.2 VAE, with its authors' settings
# (VideoX-Fun examples/wan2.2_fun/predict_i2v_5b.py: 1280x704, 121 frames at 24 fps, 50 steps,
# guidance 6, shift 5).
COMMUNITY_DEFAULTS: dict[tuple[str, str, str], WanDefaults] = {
    ("2.2", "vace", "14B"): WanDefaults("2.1", 12.0, 50, 5.0, 16, 81, SIZES_480P + SIZES_720P,
                                        guide_scale_low_noise=5.0, boundary=0.875),
    ("2.2", "i2v", "5B"): WanDefaults("2.2", 5.0, 50, 6.0, 24, 121, ((1280, 704), (704, 1280))),
}

# Wan2.2-Fun-A14B-InP (Alibaba PAI; Comfy-Org repackages it as wan2.2_fun_inpaint_{high,low}_noise_14B):
# start/end-frame experts with exactly the shapes of Wan 2.2 I2V-A14B (36 input channels, no CLIP),
# so only the file name tells them apart. Its authors' settings (VideoX-Fun
# examples/wan2.2_fun/predict_i2v.py, config wan2.2/wan_civitai_i2v.yaml): 832x480, 81 frames at
# 16 fps, 50 steps, guidance 6 on both experts, shift 5 (its UniPC option), switch at t = 900.
FUN_INP_DEFAULTS = WanDefaults("2.1", 5.0, 50, 6.0, 16, 81, SIZES_480P + SIZES_720P,
                               guide_scale_low_noise=6.0, boundary=0.900)


def official_defaults(family: str, task: str, size: str) -> WanDefaults:
    """Defaults of the official variant, or of the closest one (same family and task)."""
    for table in (OFFICIAL_DEFAULTS, NANO_DEFAULTS, COMMUNITY_DEFAULTS):
        if (family, task, size) in table:
            return table[(family, task, size)]
    for (fam, tsk, _), defaults in [*OFFICIAL_DEFAULTS.items(), *COMMUNITY_DEFAULTS.items()]:
        if fam == family and tsk == task:
            return defaults
    for (_, tsk, _), defaults in OFFICIAL_DEFAULTS.items():
        if tsk == task:
            return defaults
    raise KeyError(f"no official defaults for Wan {family} {task}")


# --------------------------------------------------------------------------- DiT variants

SIZE_BY_DIM = {128: "nano", 1536: "1.3B", 3072: "5B", 5120: "14B"}
HEAD_DIM = 128


@dataclass(frozen=True)
class WanVariant:
    """The detection result for one Wan DiT file."""

    family: str                 # "2.1" / "2.2"
    task: str                   # "t2v" / "i2v" / "flf2v" / "ti2v" / "vace"
    size: str                   # "1.3B" / "5B" / "14B" (or "custom (dim N)")
    expert: Optional[str]       # "high" / "low" for a Wan 2.2 A14B expert named as such
    config: WanDiTConfig        # the architecture to build
    defaults: WanDefaults
    family_from: str = "weights"  # "weights", "file name", or "assumed" (ambiguous shapes)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        label = f"Wan {self.family} {self.task.upper()}-{self.size}"
        return label + (f" ({self.expert}-noise expert)" if self.expert else "")


_UNSUPPORTED = (
    ("control_adapter.conv.weight", "a Wan Fun camera-control model"),
    ("casual_audio_encoder.encoder.final_linear.weight", "a Wan 2.2 S2V (speech-to-video) model"),
    ("audio_proj.audio_proj_glob_1.layer.bias", "a HuMo model"),
    ("face_adapter.fuser_blocks.0.k_norm.weight", "a Wan 2.2 Animate model"),
    ("ref_conv.weight", "a Wan 2.2 Fun reference model"),
)


def _count_blocks(keys: set[str], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if indices and indices != set(range(len(indices))):
        missing = sorted(set(range(max(indices) + 1)) - indices)
        raise WrongModelError(f"{prefix}N blocks are not contiguous (missing {missing[:5]})")
    return len(indices)


def read_config(shapes: Shapes, source: str = "the file", num_heads: Optional[int] = None,
                vace_layers: Optional[tuple[int, ...]] = None) -> WanDiTConfig:
    """Derive the DiT architecture from official-key shapes (prefixes already stripped).

    The head count cannot be read from shapes; it is ``dim / 128`` (every Wan model) unless a
    config.json next to the weights says otherwise (``num_heads``).
    """
    keys = set(shapes)
    if "head.modulation" not in keys or "patch_embedding.weight" not in keys:
        raise wrong_model_error(source, shapes, "a Wan diffusion model (DiT)")
    for marker, what in _UNSUPPORTED:
        if marker in keys:
            raise UnsupportedModelError(f"{source}: this is {what} (found {marker!r}); WanFlow "
                                        "supports Wan T2V, I2V, FLF2V, TI2V and VACE models.")
    dim, in_dim = shapes["patch_embedding.weight"][:2]
    out_dim = shapes["head.head.weight"][0] // 4
    if num_heads is None:
        if dim % HEAD_DIM:
            raise WrongModelError(f"{source}: model width {dim} is not a multiple of Wan's head "
                                  f"size {HEAD_DIM}; expected a Wan DiT (widths 1536, 3072 or "
                                  "5120), or a config.json giving num_heads.")
        num_heads = dim // HEAD_DIM
    has_img = "img_emb.proj.0.weight" in keys
    pos = shapes.get("img_emb.emb_pos")
    vace_in = shapes.get("vace_patch_embedding.weight")
    num_layers = _count_blocks(keys, "blocks.")
    if vace_in is not None:
        model_type = "vace"
    elif pos is not None:
        model_type = "flf2v"
    elif has_img:
        model_type = "i2v"
    elif out_dim == 48 and in_dim == 48:
        model_type = "ti2v"
    elif in_dim == 2 * out_dim + 4:
        # mask + image latent beside the noise, no CLIP branch: Wan 2.2 I2V-A14B and Fun-A14B-InP
        # (36), Wan2.2-Fun-5B-InP (100: the Wan 2.2 VAE's 48-channel latents)
        model_type = "i2v"
    elif in_dim == 16:
        model_type = "t2v"
    else:
        raise UnsupportedModelError(f"{source}: a Wan DiT with {in_dim} input and {out_dim} output "
                                    "channels (a Fun control variant?); expected 16 (T2V, VACE), "
                                    "36 (I2V, FLF2V, Fun-A14B-InP), 48 (TI2V-5B) or 100 "
                                    "(Fun-5B-InP).")
    extra: dict = {}
    if model_type == "vace":
        n_vace = _count_blocks(keys, "vace_blocks.")
        if vace_layers is None:
            step = num_layers // max(n_vace, 1)
            vace_layers = tuple(range(0, num_layers, step))[:n_vace]
        elif len(vace_layers) != n_vace:
            raise WrongModelError(f"{source}: config lists {len(vace_layers)} VACE layers but the "
                                  f"weights hold {n_vace} vace_blocks")
        extra.update(vace_layers=tuple(vace_layers), vace_in_dim=vace_in[1])
    if has_img:
        extra.update(has_image_input=True, clip_dim=shapes["img_emb.proj.0.weight"][0],
                     flf_pos_len=pos[1] if pos is not None else None)
    return WanDiTConfig(dim=dim, ffn_dim=shapes["blocks.0.ffn.0.weight"][0], num_heads=num_heads,
                        num_layers=num_layers, in_dim=in_dim, out_dim=out_dim,
                        text_dim=shapes["text_embedding.0.weight"][1],
                        freq_dim=shapes["time_embedding.0.weight"][1], model_type=model_type,
                        **extra)


# ---- file names: the only evidence for high/low experts and for 2.1 vs 2.2 T2V-14B

_WORD_EDGE = r"(?<![a-z0-9]){}(?![a-z0-9])"
_HIGH = re.compile(_WORD_EDGE.format(r"high(?:[_\-. ]?noise)?(?:[_\-]model)?"))
_LOW = re.compile(_WORD_EDGE.format(r"low(?:[_\-. ]?noise)?(?:[_\-]model)?"))
_WAN22 = re.compile(r"wan[_\-. ]?2[_\-. ]?2|a14b")
_WAN21 = re.compile(r"wan[_\-. ]?2[_\-. ]?1")
# Phantom-Wan (ByteDance, subject-to-video) is a Wan 2.1 T2V DiT with the T2V keys and shapes, told
# apart by its file name only: bytedance-research/Phantom ships Phantom-Wan-1.3B.pth and the 14B
# release; Kijai/WanVideo_comfy repackages them as Phantom-Wan-1_3B_fp16/_fp32 and
# Phantom-Wan-14B_fp16 / _fp8_e4m3fn .safetensors, QuantStack as Phantom_Wan_14B-Q*.gguf.
_PHANTOM = re.compile(r"phantom")
PHANTOM_NOTE = ("Phantom-Wan subject-to-video (from the file name): use it with WanFlow Subject to Video; official "
                "settings 50 steps, shift 5, text guidance 7.5, picture guidance 5.0.")
_FUN_INP = re.compile(r"fun[_\-. ]?(?:a14b[_\-. ]?)?inp(?:aint(?:ing)?)?(?![a-z])")


def _name_parts(path: Union[str, Path, None]) -> list[str]:
    """File name and its folder, lower-cased (further up is the user's business, not the model's)."""
    if not path:
        return []
    p = Path(path)
    parts = [p.name.lower(), p.parent.name.lower()]
    if p.name.lower().endswith(".index.json") or p.suffix == "":
        parts.append(p.parent.parent.name.lower())
    return [x for x in parts if x]


def expert_from_name(path: Union[str, Path, None]) -> Optional[str]:
    """"high"/"low" when the file or its folder says so (high_noise, HIGH, transformer_2, ...)."""
    for part in _name_parts(path):
        if part == "transformer_2":  # diffusers Wan 2.2 pipelines: transformer_2 = low noise
            return "low"
        high, low = bool(_HIGH.search(part)), bool(_LOW.search(part))
        if high != low:
            return "high" if high else "low"
    p = Path(path) if path else None
    folder = p if (p is not None and p.is_dir()) else (p.parent if p is not None else None)
    if folder is not None and folder.name == "transformer" and (folder.parent / "transformer_2").is_dir():
        return "high"  # diffusers Wan 2.2 pipelines: transformer = high noise
    return None


def family_from_name(path: Union[str, Path, None]) -> Optional[str]:
    text = " ".join(_name_parts(path))
    if _WAN22.search(text):
        return "2.2"
    if _WAN21.search(text) or _PHANTOM.search(text):  # every Phantom-Wan release is built on Wan 2.1
        return "2.1"
    return None


def phantom_from_name(path: Union[str, Path, None]) -> bool:
    """Whether the file or its folder names Phantom-Wan (nothing in the weights tells it from T2V)."""
    return bool(_PHANTOM.search(" ".join(_name_parts(path))))


def is_fun_inp_name(path: Union[str, Path, None]) -> bool:
    """Whether the file or its folder is named as Wan2.2-Fun-A14B-InP (fun_inpaint, Fun-A14B-InP, ...)."""
    return bool(_FUN_INP.search(" ".join(_name_parts(path))))


def detect_dit_variant(shapes: Shapes, path: Union[str, Path, None] = None,
                       num_heads: Optional[int] = None,
                       vace_layers: Optional[tuple[int, ...]] = None,
                       expert: Optional[str] = None) -> WanVariant:
    """Detect a Wan DiT variant from official-key shapes and (for experts) the file name.

    ``expert`` ("high"/"low") overrides the expert read from the file name.
    """
    source = str(path) if path else "the file"
    if expert not in (None, "high", "low"):
        raise ValueError(f"expert={expert!r}; expected 'high', 'low' or None")
    config = read_config(shapes, source, num_heads, vace_layers)
    size = SIZE_BY_DIM.get(config.dim, f"custom (dim {config.dim})")
    chosen_expert = expert
    expert = expert or expert_from_name(path)
    named_family = family_from_name(path)
    notes: list[str] = []

    if config.model_type == "ti2v" or (config.model_type == "i2v" and not config.has_image_input):
        family, family_from = "2.2", "weights"
    elif config.model_type == "vace" and config.dim != 1536 and (expert or named_family == "2.2"):
        family, family_from = "2.2", "file name"  # Wan2.2-VACE-Fun-A14B expert pair (no 2.2 VACE is 1.3B wide)
    elif config.model_type in ("flf2v", "vace") or config.has_image_input:
        family, family_from = "2.1", "weights"
    elif config.dim == 1536:
        family, family_from = "2.1", "weights"  # no Wan 2.2 model has width 1536
    elif expert is not None or named_family == "2.2":
        family, family_from = "2.2", "file name"
    elif named_family == "2.1":
        family, family_from = "2.1", "file name"
    else:
        family, family_from = "2.1", "assumed"
        notes.append("Wan 2.1 T2V-14B and a Wan 2.2 T2V-A14B expert have identical shapes; "
                     "assumed 2.1 (put 'wan2.2' or 'high_noise'/'low_noise' in the file name).")

    if family != "2.2" or config.model_type not in ("t2v", "i2v", "vace") or config.out_dim == 48:
        if chosen_expert is not None:
            raise WrongModelError(f"{source}: expert={chosen_expert!r} was asked for, but this is "
                                  f"Wan {family} {config.model_type.upper()}, which has no "
                                  "high/low-noise experts.")
        expert = None
    elif expert is None:
        notes.append("Wan 2.2 A14B expert: the file name does not say high or low noise.")
    defaults = official_defaults(family, config.model_type, size)
    if family == "2.2" and config.model_type == "i2v" and size == "14B" and is_fun_inp_name(path):
        defaults = FUN_INP_DEFAULTS
        notes.append("Wan2.2-Fun-A14B-InP (from the file name): the Wan 2.2 I2V-A14B architecture trained for a "
                     "start image, an end image or both (WanFlow Image to Video); its authors' settings.")
    if family == "2.2" and config.model_type == "i2v" and config.out_dim == 48:
        notes.append("Wan2.2-Fun-5B-InP: a start image, an end image or both (WanFlow Image to Video) with "
                     "the Wan 2.2 VAE; its authors' settings.")
    if config.model_type == "t2v" and family == "2.1" and phantom_from_name(path):
        notes.append(PHANTOM_NOTE)
    return WanVariant(family=family, task=config.model_type, size=size, expert=expert,
                      config=config, defaults=defaults,
                      family_from=family_from, notes=tuple(notes))
