"""Every common Wan LoRA dialect, read into one canonical form.

Wan LoRAs reach users in many key dialects (ComfyUI/original, kohya/musubi, Wan-Fun,
diffusers/PEFT, DiffSynth, lightx2v distill deltas, LyCORIS LoHa/LoKr; ai-toolkit's combined
high/low files are split by :func:`select_expert`). They all describe the
same thing: for some module of the official Wan DiT, a change to its weight and/or bias. This
module turns any of them into ``{official target path: TargetPatch}``, for example::

    "blocks.3.self_attn.q" -> TargetPatch(weights=[LowRank(down, up, alpha)])
    "blocks.3.norm3"       -> TargetPatch(weights=[FullDiff(d)], bias=db)
    "blocks.3.modulation"  -> TargetPatch(weights=[FullDiff(d_m)])   # a parameter, not a module

A target path is an official Wan module path, or the path of a bare parameter such as
``blocks.N.modulation``. Nothing here knows about a live model except, for the kohya-style
dialects, the list of real target names needed to undo their ``.`` -> ``_`` flattening.
Applying patches to a model is ``wan/lora.py``.

Scaling (the shared reference, ecosystem-formats.md §7.3): low rank ``alpha / rank`` (1 when the
file has no alpha), LoHa ``alpha / rank``, LoKr ``alpha / rank`` of its low-rank factor (1 when
both factors are full), full diffs 1. The user's strength multiplies on top, in ``wan/lora.py``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Collection, Iterable, Mapping, Optional, Union

import torch

from . import dit_keys



# --------------------------------------------------------------------------------------------
# Canonical patch types
# --------------------------------------------------------------------------------------------

def _f32(t: torch.Tensor, device: Optional[torch.device]) -> torch.Tensor:
    """``t`` as float32 on ``device`` (moved first, so big products run where the model is)."""
    return t.to(device=device).float()


@dataclass
class LowRank:
    """``ΔW = (alpha / rank) · up @ down`` (plain LoRA)."""

    down: torch.Tensor  # [rank, in_features] (or conv [rank, in, *kernel])
    up: torch.Tensor  # [out_features, rank] (or conv [out, rank, 1, ...])
    alpha: Optional[float] = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.up.shape[0], *self.down.shape[1:])

    def delta(self, device: Optional[torch.device] = None) -> torch.Tensor:
        """The full fp32 weight delta, computed on ``device`` (merged mode, non-Linear targets)."""
        up = _f32(self.up, device).flatten(1)
        down = _f32(self.down, device).flatten(1)
        return (up @ down).reshape(self.shape) * self.scale


@dataclass
class LoHa:
    """LyCORIS LoHa: ``ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · alpha / rank``."""

    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    alpha: Optional[float] = None

    @property
    def rank(self) -> int:
        return self.w1_b.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.w1_a.shape[0], self.w1_b.shape[1])

    def delta(self, device: Optional[torch.device] = None) -> torch.Tensor:
        w1 = _f32(self.w1_a, device) @ _f32(self.w1_b, device)
        w2 = _f32(self.w2_a, device) @ _f32(self.w2_b, device)
        return w1 * w2 * self.scale


@dataclass
class LoKr:
    """LyCORIS LoKr: ``ΔW = kron(w1, w2) · scale``; each factor stored full or as ``a @ b``."""

    w1: Optional[torch.Tensor] = None
    w1_a: Optional[torch.Tensor] = None
    w1_b: Optional[torch.Tensor] = None
    w2: Optional[torch.Tensor] = None
    w2_a: Optional[torch.Tensor] = None
    w2_b: Optional[torch.Tensor] = None
    alpha: Optional[float] = None

    def _factor(self, which: int, device: Optional[torch.device]) -> torch.Tensor:
        full, a, b = (self.w1, self.w1_a, self.w1_b) if which == 1 else (self.w2, self.w2_a, self.w2_b)
        return _f32(full, device) if full is not None else _f32(a, device) @ _f32(b, device)

    @property
    def rank(self) -> Optional[int]:
        """Rank of the low-rank factor (w2's wins, like LyCORIS); None when both are full."""
        if self.w2 is None:
            return self.w2_b.shape[0]
        if self.w1 is None:
            return self.w1_b.shape[0]
        return None

    @property
    def scale(self) -> float:
        if self.alpha is None or self.rank is None:
            return 1.0
        return self.alpha / self.rank

    @property
    def shape(self) -> tuple[int, ...]:
        def rows_cols(full, a, b):
            return tuple(full.shape) if full is not None else (a.shape[0], b.shape[1])
        r1, c1 = rows_cols(self.w1, self.w1_a, self.w1_b)
        r2, c2 = rows_cols(self.w2, self.w2_a, self.w2_b)
        return (r1 * r2, c1 * c2)

    def delta(self, device: Optional[torch.device] = None) -> torch.Tensor:
        return torch.kron(self._factor(1, device), self._factor(2, device)) * self.scale


@dataclass
class FullDiff:
    """A full-shape delta (lightx2v ``.diff`` / ``.diff_m``), added as is."""

    diff: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.diff.shape)

    def delta(self, device: Optional[torch.device] = None) -> torch.Tensor:
        return _f32(self.diff, device)


WeightPatch = Union[LowRank, LoHa, LoKr, FullDiff]


@dataclass
class TargetPatch:
    """Everything one LoRA file changes on one target (module or bare parameter)."""

    weights: list[WeightPatch] = field(default_factory=list)  # summed: e.g. a LoRA plus a .diff
    bias: Optional[torch.Tensor] = None  # ``.diff_b``: added to the target's bias
    keys: list[str] = field(default_factory=list)  # the file keys this patch was built from


@dataclass
class ParsedLora:
    """One LoRA file in canonical form."""

    patches: dict[str, TargetPatch]
    dialects: set[str]
    unparsed: dict[str, str]  # file key -> why it could not be read
    total_keys: int


# --------------------------------------------------------------------------------------------
# Key dialects
# --------------------------------------------------------------------------------------------

# File-key suffix -> canonical part name. Longest suffixes are tried first.
_SUFFIXES: dict[str, str] = {
    ".lora_up.weight": "up", ".lora_down.weight": "down", ".lora_mid.weight": "mid",
    ".lora_B.default.weight": "up", ".lora_A.default.weight": "down",
    ".lora_B.weight": "up", ".lora_A.weight": "down",
    ".lora_B.bias": "diff_b",  # diffusers' reading of lightx2v .diff_b
    "_lora.up.weight": "up", "_lora.down.weight": "down",
    ".lora.up.weight": "up", ".lora.down.weight": "down",
    ".lora_linear_layer.up.weight": "up", ".lora_linear_layer.down.weight": "down",
    ".lora_B": "up", ".lora_A": "down",
    ".alpha": "alpha",
    ".diff": "diff", ".diff_b": "diff_b", ".diff_m": "diff_m",
    ".hada_w1_a": "hada_w1_a", ".hada_w1_b": "hada_w1_b",
    ".hada_w2_a": "hada_w2_a", ".hada_w2_b": "hada_w2_b",
    ".hada_t1": "hada_t1", ".hada_t2": "hada_t2",
    ".lokr_w1": "lokr_w1", ".lokr_w1_a": "lokr_w1_a", ".lokr_w1_b": "lokr_w1_b",
    ".lokr_w2": "lokr_w2", ".lokr_w2_a": "lokr_w2_a", ".lokr_w2_b": "lokr_w2_b",
    ".lokr_t2": "lokr_t2",
    ".dora_scale": "dora_scale", ".set_weight": "set_weight",
}
_SUFFIX_ORDER = sorted(_SUFFIXES, key=len, reverse=True)

# Parts we recognise but do not apply, with the reason given to the user.
_UNSUPPORTED_PARTS = {
    "mid": "lora_mid (LoCon Tucker conv factor) is not supported; Wan's LoRA targets are Linear",
    "hada_t1": "LoHa Tucker factors (hada_t1/t2) are for conv layers and are not supported",
    "hada_t2": "LoHa Tucker factors (hada_t1/t2) are for conv layers and are not supported",
    "lokr_t2": "LoKr Tucker factor (lokr_t2) is for conv layers and is not supported",
    "dora_scale": "DoRA (dora_scale) is not supported",
    "set_weight": "set_weight (replace a whole weight) is not supported",
}

# Dotted prefixes stripped from module paths (repeatedly), with the dialect they reveal.
_DOTTED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.diffusion_model.", "comfyui"),
    ("diffusion_model.", "comfyui"),
    ("base_model.model.", "peft"),
    ("pipe.dit.", "diffsynth"),
    ("pipe.vace.", "diffsynth"),
    ("transformer.", "diffusers"),
)

# Underscore-flattened prefixes (kohya/musubi, Wan-Fun, LyCORIS); longest first.
_FLAT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("lora_unet__", "wan-fun"),
    ("lora_unet_", "kohya"),
    ("lycoris_", "lycoris"),
)

# Segments that only occur in diffusers' WanTransformer3DModel names.
_DIFFUSERS_SEGMENT = re.compile(
    r"(^|\.)(attn1|attn2|condition_embedder|proj_out|scale_shift_table|norm_added_k)(\.|$)"
    r"|(^|\.)ffn\.net\.")


def split_key(key: str) -> tuple[str, Optional[str]]:
    """``"a.b.lora_up.weight"`` -> ``("a.b", "up")``; the part is None for unknown suffixes."""
    for suffix in _SUFFIX_ORDER:
        if key.endswith(suffix):
            return key[: -len(suffix)], _SUFFIXES[suffix]
    return key, None


def flat_index(target_names: Iterable[str]) -> dict[str, str]:
    """Map each real target name with its dots flattened to ``_`` back to the real name."""
    return {name.replace(".", "_"): name for name in target_names}


def _diffusers_to_official_module(name: str) -> str:
    """A diffusers module path (``blocks.0.attn1.to_q``) as its official path (``blocks.0.self_attn.q``).

    Uses the DiT key table of ``dit_keys`` on a one-key state dict, so both stay in step. Names
    the table does not know are returned unchanged (they then match nothing and are reported).
    """
    probe = f"{name}.weight"
    try:
        converted = dit_keys.diffusers_to_official({probe: None})
    except KeyError:
        return name
    if len(converted) != 1:  # a key diffusers itself ignores (norm_added_q)
        return name
    (official,) = converted.keys()
    return official[: -len(".weight")] if official.endswith(".weight") else official


def _module_path(raw: str, flat: Mapping[str, str], diffusers_names: bool) -> tuple[Optional[str], str]:
    """Official target path for the module part of a file key, and the dialect it is written in."""
    dialect = "original"
    for prefix, name in _FLAT_PREFIXES:
        if raw.startswith(prefix):
            return flat.get(raw[len(prefix):]), name
    stripped = True
    while stripped:
        stripped = False
        for prefix, name in _DOTTED_PREFIXES:
            if raw.startswith(prefix):
                raw, dialect, stripped = raw[len(prefix):], name, True
    if diffusers_names:
        raw, dialect = _diffusers_to_official_module(raw), "diffusers"
    return raw, dialect


def _scalar(t: torch.Tensor, key: str) -> float:
    if t.numel() != 1:
        raise ValueError(f"LoRA key {key!r}: alpha must be a single number, found shape {tuple(t.shape)}")
    return float(t.float().item())


def parse_lora(state_dict: Mapping[str, torch.Tensor],
               target_names: Optional[Collection[str]] = None,
               default_alpha: Optional[float] = None) -> ParsedLora:
    """Read a LoRA state dict in any supported dialect into canonical patches.

    ``target_names`` (the model's official module and parameter paths) are needed only to undo
    the ``_`` flattening of kohya / Wan-Fun / LyCORIS keys; without them such keys stay unparsed.
    ``default_alpha`` applies to low-rank patches that have no ``.alpha`` key (PEFT's
    ``lora_alpha`` lives in ``adapter_config.json``, not in the weights).
    """
    if not state_dict:
        raise ValueError("LoRA state dict is empty: no tensors to apply")
    flat = flat_index(target_names or ())
    diffusers_names = any(_DIFFUSERS_SEGMENT.search(split_key(k)[0]) for k in state_dict)

    parts: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    dialects: set[str] = set()
    unparsed: dict[str, str] = {}
    for key, tensor in state_dict.items():
        raw, part = split_key(key)
        if part is None:
            unparsed[key] = "unknown key suffix (not a LoRA/LoHa/LoKr/diff part)"
            continue
        if part in _UNSUPPORTED_PARTS:
            unparsed[key] = _UNSUPPORTED_PARTS[part]
            continue
        target, dialect = _module_path(raw, flat, diffusers_names)
        if target is None:
            unparsed[key] = ("flattened (kohya-style) name matches no module of this model"
                             if flat else "flattened (kohya-style) name needs the model's module names")
            continue
        if part == "diff_m":  # lightx2v: `blocks.N.diff_m` is the delta of `blocks.N.modulation`
            target, part = f"{target}.modulation" if target else "modulation", "diff"
        if key.endswith(".default.weight"):
            dialect = "diffsynth" if dialect == "original" else dialect
        dialects.add("lightx2v" if part in ("diff", "diff_b") and dialect in ("original", "comfyui")
                     else dialect)
        slot = parts.setdefault(target, {})
        if part in slot:
            unparsed[key] = f"duplicate of {slot[part][0]!r} (same target and part)"
            continue
        slot[part] = (key, tensor)

    patches: dict[str, TargetPatch] = {}
    for target, slot in parts.items():
        try:
            patch = _assemble(slot, default_alpha)
        except ValueError as err:
            for key, _ in slot.values():
                unparsed[key] = str(err)
            continue
        patches[target] = patch
    dialects.discard("original")
    return ParsedLora(patches=patches, dialects=dialects or {"original"}, unparsed=unparsed,
                      total_keys=len(state_dict))


def _assemble(slot: dict[str, tuple[str, torch.Tensor]], default_alpha: Optional[float]) -> TargetPatch:
    """Build one TargetPatch from the parts found for one target; ValueError if incomplete."""
    get = {part: t for part, (_, t) in slot.items()}
    keys = [k for k, _ in slot.values()]
    alpha = _scalar(get["alpha"], slot["alpha"][0]) if "alpha" in get else default_alpha
    kinds = [name for name, present in (
        ("low-rank", "up" in get or "down" in get),
        ("LoHa", any(p.startswith("hada_") for p in get)),
        ("LoKr", any(p.startswith("lokr_") for p in get))) if present]
    if len(kinds) > 1:
        raise ValueError(f"conflicting weight patches for one target: {', '.join(kinds)}")

    weights: list[WeightPatch] = []
    if "up" in get or "down" in get:
        if "up" not in get or "down" not in get:
            raise ValueError("low-rank pair is incomplete (needs both down/A and up/B)")
        down, up = get["down"], get["up"]
        if down.ndim < 2 or up.ndim < 2 or 0 in (*down.shape, *up.shape):
            raise ValueError(f"low-rank factors must be non-empty matrices, found down {tuple(down.shape)} "
                             f"and up {tuple(up.shape)}")
        if up.shape[1] != down.shape[0]:
            raise ValueError(f"low-rank shapes do not chain: up {tuple(up.shape)} vs down {tuple(down.shape)}")
        weights.append(LowRank(down=down, up=up, alpha=alpha))
    elif any(p.startswith("hada_") for p in get):
        need = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        missing = [p for p in need if p not in get]
        if missing:
            raise ValueError(f"LoHa patch is missing {', '.join(missing)}")
        weights.append(LoHa(*(get[p] for p in need), alpha=alpha))
    elif any(p.startswith("lokr_") for p in get):
        for n in (1, 2):
            if f"lokr_w{n}" not in get and not {f"lokr_w{n}_a", f"lokr_w{n}_b"} <= get.keys():
                raise ValueError(f"LoKr patch needs lokr_w{n} or both lokr_w{n}_a and lokr_w{n}_b")
        weights.append(LoKr(**{p[len("lokr_"):]: t for p, t in get.items() if p.startswith("lokr_")},
                            alpha=alpha))
    if "diff" in get:  # lightx2v files may carry a full diff next to a LoRA on the same module
        weights.append(FullDiff(get["diff"]))
    bias = get.get("diff_b")
    if not weights and bias is None:
        raise ValueError("only an alpha, no weight or bias delta")
    return TargetPatch(weights=weights, bias=bias, keys=keys)


# ai-toolkit's Wan 2.2 A14B "combined" LoRA keeps both experts in one file:
# `diffusion_model.transformer_1.<path>` (high noise) and `diffusion_model.transformer_2.<path>` (low).
_COMBINED_EXPERT = {"high": ".transformer_1.", "low": ".transformer_2."}


def select_expert(state_dict: Mapping[str, torch.Tensor], expert: str) -> Mapping[str, torch.Tensor]:
    """The part of an ai-toolkit combined high/low file meant for ``expert`` ("high" or "low"),
    with the ``transformer_1``/``transformer_2`` segment removed; other files unchanged."""
    if not any(marker in key for key in state_dict for marker in _COMBINED_EXPERT.values()):
        return state_dict
    marker = _COMBINED_EXPERT[expert]
    return {key.replace(marker, ".", 1): t for key, t in state_dict.items() if marker in key}


# --------------------------------------------------------------------------------------------
# What a foreign file is (for the zero-match error)
# --------------------------------------------------------------------------------------------

_FOREIGN_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"(input_blocks|middle_block|output_blocks|down_blocks|up_blocks|mid_block)"),
     "this looks like a Stable Diffusion 1.x/SDXL LoRA (UNet keys such as 'input_blocks' or "
     "'down_blocks'); it cannot apply to a Wan video DiT"),
    (re.compile(r"(^|[._])(lora_te\d?_|text_encoder|text_model)"),
     "this looks like a text-encoder LoRA (CLIP/T5 keys); it does not patch the Wan DiT"),
    (re.compile(r"(double_blocks|single_blocks|single_transformer_blocks|transformer_blocks)"),
     "this looks like a Flux / HunyuanVideo / Qwen-Image style LoRA ('double_blocks', "
     "'single_blocks' or 'transformer_blocks' keys); it cannot apply to a Wan DiT"),
    (re.compile(r"(encoder|decoder)[._](downsamples|upsamples|middle|conv1|head|conv_in|conv_out|"
                r"down_blocks|up_blocks|mid_block)"),
     "this is a VAE LoRA (it patches the VAE encoder/decoder, not the DiT)"),
    (re.compile(r"(^|[._])encoder[._]block[._]\d+|SelfAttention|DenseReluDense"),
     "this looks like a umT5 text-encoder LoRA; it does not patch the Wan DiT"),
)


def describe_foreign(keys: Iterable[str]) -> Optional[str]:
    """A one-line guess of what kind of non-Wan-DiT LoRA these keys come from, or None."""
    keys = list(keys)
    for pattern, message in _FOREIGN_PATTERNS:
        hits = sum(1 for k in keys if pattern.search(k))
        if hits and hits * 2 >= len(keys):
            return message
    return None


_WIDTH_NAMES = {1536: "Wan 2.1 1.3B", 3072: "Wan 2.2 TI2V-5B", 5120: "Wan 14B: 2.1 or 2.2 A14B"}


def width_name(width: int) -> str:
    """``5120`` -> ``"5120-wide (Wan 14B ...)"``: how a model width reads in error messages."""
    name = _WIDTH_NAMES.get(width)
    return f"{width}-wide ({name})" if name else f"{width}-wide"


def lora_width(parsed: ParsedLora) -> Optional[int]:
    """The DiT width a LoRA was made for, read from the shapes of its block patches."""
    widths = []
    for target, patch in parsed.patches.items():
        for weight in patch.weights:
            if re.search(r"(self_attn|cross_attn)\.[qkvo]$|ffn\.2$", target):
                widths.append(weight.shape[0])  # out features = dim
            elif target.endswith("ffn.0"):
                widths.append(weight.shape[1])  # in features = dim
    if not widths:
        return None
    return max(set(widths), key=widths.count)
