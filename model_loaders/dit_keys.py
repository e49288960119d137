"""Wan DiT state-dict keys: official Wan names <-> diffusers ``WanTransformer3DModel`` names.

Our :class:`~..wan.dit.WanDiT` uses the official names (also used by ComfyUI files once the
``model.diffusion_model.`` prefix is stripped). diffusers files use other module paths; the two
tables below list every renamed module, once, and are read in both directions.

A key is ``<module path>.<tensor name>``; the module path is renamed, the tensor name
(``weight``, ``bias``, or extra buffers such as a scaled-fp8 ``scale_weight``) is kept. A few
entries are whole parameters (``modulation``, ``emb_pos``), matched as full keys.
Keys must be bare (prefixes such as ``model.diffusion_model.`` removed by the caller).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

# Top level: official -> diffusers (module paths, or whole parameter names).
TOP_LEVEL: tuple[tuple[str, str], ...] = (
    ("patch_embedding", "patch_embedding"),
    ("vace_patch_embedding", "vace_patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),                        # parameter
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),  # parameter
)

# Inside ``blocks.N.`` and ``vace_blocks.N.``: official -> diffusers.
IN_BLOCK: tuple[tuple[str, str], ...] = (
    ("modulation", "scale_shift_table"),                             # parameter
    ("self_attn.q", "attn1.to_q"),
    ("self_attn.k", "attn1.to_k"),
    ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("self_attn.norm_q", "attn1.norm_q"),
    ("self_attn.norm_k", "attn1.norm_k"),
    ("norm3", "norm2"),               # the affine LayerNorm before cross-attention
    ("cross_attn.q", "attn2.to_q"),
    ("cross_attn.k", "attn2.to_k"),
    ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.norm_q", "attn2.norm_q"),
    ("cross_attn.norm_k", "attn2.norm_k"),
    ("cross_attn.k_img", "attn2.add_k_proj"),
    ("cross_attn.v_img", "attn2.add_v_proj"),
    ("cross_attn.norm_k_img", "attn2.norm_added_k"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("before_proj", "proj_in"),       # VACE block 0
    ("after_proj", "proj_out"),       # every VACE block
)

_BLOCK_KEY = re.compile(r"^((?:vace_)?blocks\.\d+\.)(.+)$")


def _rename(key: str, table: Mapping[str, str], direction: str) -> str:
    if key in table:                                  # a whole parameter
        return table[key]
    module, _, tensor = key.rpartition(".")
    if module in table:
        return f"{table[module]}.{tensor}"
    raise KeyError(f"dit_keys.{direction}: no rule for key {key!r} (module {module!r}); is this "
                   "a Wan DiT state dict without prefix?")


def _convert(sd: Mapping[str, Any], top: Mapping[str, str], block: Mapping[str, str],
             direction: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in sd.items():
        match = _BLOCK_KEY.match(key)
        if match:
            new_key = match.group(1) + _rename(match.group(2), block, direction)
        else:
            new_key = _rename(key, top, direction)
        if new_key in out:
            raise KeyError(f"dit_keys.{direction}: two keys map to {new_key!r}")
        out[new_key] = value
    return out


def official_to_diffusers(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Rename an official-layout Wan DiT state dict to diffusers names (tensors are shared)."""
    return _convert(sd, dict(TOP_LEVEL), dict(IN_BLOCK), "official_to_diffusers")


def diffusers_to_official(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Rename a diffusers ``WanTransformer3DModel`` / ``WanVACETransformer3DModel`` state dict to
    official names. diffusers' unused ``norm_added_q`` (ignored by diffusers too) is dropped."""
    top = {d: o for o, d in TOP_LEVEL}
    block = {d: o for o, d in IN_BLOCK}
    kept = {k: v for k, v in sd.items() if ".attn2.norm_added_q." not in k}
    return _convert(kept, top, block, "diffusers_to_official")


def diffusers_class_name(cfg: Any) -> str:
    """Name of the diffusers transformer class matching a :class:`WanDiTConfig`."""
    return "WanVACETransformer3DModel" if cfg.vace_layers else "WanTransformer3DModel"


def diffusers_config(cfg: Any) -> dict[str, Any]:
    """Constructor kwargs of the diffusers transformer equivalent to a :class:`WanDiTConfig`.

    Use with :func:`diffusers_class_name`; the weights then convert with
    :func:`official_to_diffusers` and load strictly.
    """
    kwargs: dict[str, Any] = dict(
        patch_size=tuple(cfg.patch_size),
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim,
        out_channels=cfg.out_dim,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
        image_dim=cfg.clip_dim if cfg.has_image_input else None,
        added_kv_proj_dim=cfg.dim if cfg.has_image_input else None,
        rope_max_seq_len=1024,
        pos_embed_seq_len=cfg.flf_pos_len,
    )
    if cfg.vace_layers:
        kwargs.update(vace_layers=list(cfg.vace_layers), vace_in_channels=cfg.vace_in_dim)
    return kwargs
