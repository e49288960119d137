"""The workflow templates shipped in ``workflows/``, described once and generated from the node classes.

Widget values are the official Wan settings of each model (Wan2.2 / Wan2.1 configs and
``generate.py`` defaults, see ../shared/reference/wan-architecture.md section 1.2); file names
are the Comfy-Org repackaged ones most ComfyUI users already have.

    python -m wanflow.runner.templates          # rewrite workflows/*.json
    python -m wanflow.runner.templates --check  # exit 1 if a file is out of date
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from . import execute, workflow
from .registry import node_classes
from .template_layout import Column
from .ui_graph import Node, build, note

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"

REPO_22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
REPO_21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
REPO_KIJAI = "https://huggingface.co/Kijai/WanVideo_comfy/resolve/main"  # flat: no per-folder layout

T2V_HIGH = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
T2V_LOW = "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
I2V_HIGH = "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"
I2V_LOW = "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"
TI2V_5B = "wan2.2_ti2v_5B_fp16.safetensors"
VACE_14B = "wan2.1_vace_14B_fp16.safetensors"
PHANTOM_14B = "Phantom-Wan-14B_fp16.safetensors"  # Kijai's repackaging of ByteDance's Phantom-Wan-14B
VACE_FUN_HIGH = "wan2.2_fun_vace_high_noise_14B_fp8_scaled.safetensors"
VACE_FUN_LOW = "wan2.2_fun_vace_low_noise_14B_fp8_scaled.safetensors"
FUN_INP_HIGH = "wan2.2_fun_inpaint_high_noise_14B_fp8_scaled.safetensors"
FUN_INP_LOW = "wan2.2_fun_inpaint_low_noise_14B_fp8_scaled.safetensors"
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE_21 = "wan_2.1_vae.safetensors"
VAE_22 = "wan2.2_vae.safetensors"
LIGHTX2V_HIGH = "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors"
LIGHTX2V_LOW = "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors"

T2V_PROMPT = ("A red fox trots through fresh snow in a birch forest at golden hour, its breath visible in the cold "
              "air; the camera tracks alongside at ground level, soft light and long shadows.")
I2V_PROMPT = "The subject of the picture comes to life: gentle natural motion, the camera slowly pushes in."
FLF_PROMPT = ("The scene moves smoothly from the first picture to the last: natural motion in between, the camera "
              "drifts slowly.")
R2V_PROMPT = "The character from the reference picture walks along a beach at sunset, waves rolling in behind."
S2V_PROMPT = ("The person from the first picture holds the object from the second picture and shows it to the camera "
              "in a bright kitchen, smiling; natural light, gentle handheld motion.")


Template = tuple[str, list[Node], list[Column]]
"""A template's title, its nodes, and its groups as columns of node ids (runner/template_layout.py)."""


def _model(repo: str, folder: str, name: str) -> dict:
    return {"name": name, "url": f"{repo}/{folder}/{name}", "directory": folder}


def _files_note(node_id: int, title: str, files: list[tuple[str, str, str]], extra: str = "") -> Node:
    """A Markdown note listing the model files and the ComfyUI folder each one goes in."""
    rows = "\n".join(f"| [{name}]({url}) | `models/{folder}/` |" for name, folder, url in files)
    text = (f"## {title}\n\nPut these files in your ComfyUI `models` folder (or pass `--models DIR` to "
            f"`wanflow run`); each name links to its download:\n\n| File | Folder |\n|---|---|\n{rows}\n\n"
            f"{extra}").strip() + "\n"
    return note(node_id, text, title="Model files")


def _row(entry: dict) -> tuple[str, str, str]:
    return entry["name"], entry["directory"], entry["url"]


def _text_nodes(prompt: str, repo: str = REPO_22, te_id: int = 4, enc_id: int = 5) -> list[Node]:
    umt5 = _model(repo, "text_encoders", UMT5)
    return [
        Node(te_id, "WanFlowTextEncoderLoader", {"text_encoder_name": UMT5}, models=[umt5]),
        Node(enc_id, "WanFlowTextEncode", {"positive": prompt}, links={"text_encoder": (te_id, 0)},
             size=(420.0, 320.0)),
    ]


def _expert_loaders(high: dict, low: dict) -> list[Node]:
    """Nodes 2 and 3: the high- and low-noise experts of a Wan 2.2 A14B pair (``_model`` entries)."""
    return [Node(2, "WanFlowModelLoader", {"model_name": high["name"]}, title="High-noise expert", models=[high]),
            Node(3, "WanFlowModelLoader", {"model_name": low["name"]}, title="Low-noise expert", models=[low])]


def _decode_and_save(prefix: str, fps: float = 16.0) -> list[Node]:
    """Nodes 9 and 10: decode the sampler's latent (node 8) with the VAE (node 6), save the video."""
    return [Node(9, "WanFlowVAEDecode", links={"samples": (8, 0), "vae": (6, 0)}),
            Node(10, "WanFlowSaveVideo", {"filename_prefix": prefix, "fps": fps}, links={"images": (9, 0)},
                 size=(420.0, 420.0))]


def t2v_a14b() -> Template:
    high, low = _model(REPO_22, "diffusion_models", T2V_HIGH), _model(REPO_22, "diffusion_models", T2V_LOW)
    vae, umt5 = _model(REPO_22, "vae", VAE_21), _model(REPO_22, "text_encoders", UMT5)
    nodes = [
        _files_note(1, "Wan 2.2 A14B text-to-video", [_row(m) for m in (high, low, umt5, vae)],
                    "Official settings: 1280x720, 81 frames at 16 fps, 40 UniPC steps, shift 12, guidance 4.0 "
                    "(high-noise expert) / 3.0 (low-noise expert), expert switch at t = 875 (boundary 0 = automatic)."),
        *_expert_loaders(high, low),
        *_text_nodes(T2V_PROMPT),
        Node(6, "WanFlowVAELoader", {"vae_name": VAE_21}, models=[vae]),
        Node(7, "WanFlowEmptyVideoLatent", {"width": 1280, "height": 720, "length": 81},
             links={"vae": (6, 0)}),
        Node(8, "WanFlowMoESampler", {"seed": 42, "steps": 40, "shift": 12.0, "solver": "unipc", "scheduler": "unipc",
              "cfg_high": 4.0, "cfg_low": 3.0, "boundary": 0.0, "denoise": 1.0},
             links={"model_high": (2, 0), "model_low": (3, 0), "conditioning": (5, 0), "latent": (7, 0)}),
        *_decode_and_save("WanFlow/t2v_a14b"),
    ]
    return "Wan 2.2 A14B text-to-video", nodes, [Column("Load models", [2, 3, 4, 6]), Column("Prompt", [5, 7]), Column("Sample", [8]),
                   Column("Decode and save", [9, 10])]


def i2v_a14b() -> Template:
    high, low = _model(REPO_22, "diffusion_models", I2V_HIGH), _model(REPO_22, "diffusion_models", I2V_LOW)
    vae, umt5 = _model(REPO_22, "vae", VAE_21), _model(REPO_22, "text_encoders", UMT5)
    nodes = [
        _files_note(1, "Wan 2.2 A14B image-to-video", [_row(m) for m in (high, low, umt5, vae)],
                    "Put your start picture in ComfyUI's `input` folder (or `--input DIR`). Official settings: "
                    "1280x720, 81 frames at 16 fps, 40 UniPC steps, shift 5, guidance 3.5 on both experts, switch at "
                    "t = 900. The picture is scaled to cover the size and centre-cropped: for a portrait picture "
                    "set 720x1280. Wan 2.2 I2V needs no CLIP vision model."),
        *_expert_loaders(high, low),
        *_text_nodes(I2V_PROMPT),
        Node(6, "WanFlowVAELoader", {"vae_name": VAE_21}, models=[vae]),
        Node(11, "LoadImage", {"image": "start_image.png"}, title="Start image", size=(320.0, 340.0)),
        Node(7, "WanFlowImageToVideo", {"width": 1280, "height": 720, "length": 81},
             links={"model": (2, 0), "conditioning": (5, 0), "vae": (6, 0), "start_image": (11, 0)}),
        Node(8, "WanFlowMoESampler", {"seed": 42, "steps": 40, "shift": 5.0, "solver": "unipc", "scheduler": "unipc",
              "cfg_high": 3.5, "cfg_low": 3.5, "boundary": 0.0, "denoise": 1.0},
             links={"model_high": (2, 0), "model_low": (3, 0), "conditioning": (7, 0), "latent": (7, 1)}),
        *_decode_and_save("WanFlow/i2v_a14b"),
    ]
    return "Wan 2.2 A14B image-to-video", nodes, [Column("Load models", [2, 3, 4, 6]), Column("Prompt", [5, 11, 7]), Column("Sample", [8]),
                   Column("Decode and save", [9, 10])]


def flf_a14b() -> Template:
    """Wan2.2-Fun-A14B-InP: start and end picture through one Image to Video node (the Wan 2.2
    I2V-A14B pair takes the same graph)."""
    high, low = _model(REPO_22, "diffusion_models", FUN_INP_HIGH), _model(REPO_22, "diffusion_models", FUN_INP_LOW)
    vae, umt5 = _model(REPO_22, "vae", VAE_21), _model(REPO_22, "text_encoders", UMT5)
    nodes = [
        _files_note(1, "Wan 2.2 A14B first-last-frame (Wan2.2-Fun-A14B-InP)", [_row(m) for m in (high, low, umt5, vae)],
                    "Put your first and last pictures in ComfyUI's `input` folder (or `--input DIR`); both are scaled "
                    "to cover the size and centre-cropped. Disconnect either one to give only a start or only an end "
                    "picture. Wan2.2-Fun-A14B-InP (Alibaba PAI) needs no CLIP vision model. Settings of its authors' "
                    "example: 832x480, 81 frames at 16 fps, 50 steps, shift 5, guidance 6 on both experts, switch at "
                    "t = 900. The Wan 2.2 I2V-A14B pair (wan2.2_i2v_high/low_noise_14B) runs in the same graph with "
                    "its own settings (40 steps, guidance 3.5)."),
        *_expert_loaders(high, low),
        *_text_nodes(FLF_PROMPT),
        Node(6, "WanFlowVAELoader", {"vae_name": VAE_21}, models=[vae]),
        Node(11, "LoadImage", {"image": "start_image.png"}, title="First frame", size=(320.0, 340.0)),
        Node(12, "LoadImage", {"image": "end_image.png"}, title="Last frame", size=(320.0, 340.0)),
        Node(7, "WanFlowImageToVideo", {"width": 832, "height": 480, "length": 81},
             links={"model": (2, 0), "conditioning": (5, 0), "vae": (6, 0), "start_image": (11, 0),
                    "end_image": (12, 0)}),
        Node(8, "WanFlowMoESampler", {"seed": 42, "steps": 50, "shift": 5.0, "solver": "unipc", "scheduler": "unipc",
              "cfg_high": 6.0, "cfg_low": 6.0, "boundary": 0.0, "denoise": 1.0},
             links={"model_high": (2, 0), "model_low": (3, 0), "conditioning": (7, 0), "latent": (7, 1)}),
        *_decode_and_save("WanFlow/flf_a14b"),
    ]
    return "Wan 2.2 A14B first-last-frame (Fun-InP)", nodes, [
        Column("Load models", [2, 3, 4, 6]), Column("Prompt", [5, 11, 12]), Column("Sample", [7, 8]),
        Column("Decode and save", [9, 10])]


def ti2v_5b() -> Template:
    model, vae = _model(REPO_22, "diffusion_models", TI2V_5B), _model(REPO_22, "vae", VAE_22)
    umt5 = _model(REPO_22, "text_encoders", UMT5)
    nodes = [
        _files_note(1, "Wan 2.2 TI2V-5B (text + image to video)", [_row(m) for m in (model, umt5, vae)],
                    "TI2V-5B uses the Wan 2.2 VAE. Official settings: 1280x704, 121 frames at 24 fps, 50 UniPC "
                    "steps, shift 5, guidance 5. Put your start picture in the `input` folder (it is scaled to "
                    "cover the size and centre-cropped: for a portrait picture set 704x1280); for text-only "
                    "video, replace Image to Video with an Empty Video Latent."),
        Node(2, "WanFlowModelLoader", {"model_name": TI2V_5B}, models=[model]),
        *_text_nodes(I2V_PROMPT),
        Node(6, "WanFlowVAELoader", {"vae_name": VAE_22}, models=[vae]),
        Node(11, "LoadImage", {"image": "start_image.png"}, title="Start image", size=(320.0, 340.0)),
        Node(7, "WanFlowImageToVideo", {"width": 1280, "height": 704, "length": 121},
             links={"model": (2, 0), "conditioning": (5, 0), "vae": (6, 0), "start_image": (11, 0)}),
        Node(8, "WanFlowMoESampler", {"seed": 42, "steps": 50, "shift": 5.0, "solver": "unipc", "scheduler": "unipc",
              "cfg_high": 5.0, "cfg_low": 5.0, "boundary": 0.0, "denoise": 1.0},
             links={"model_high": (2, 0), "conditioning": (7, 0), "latent": (7, 1)}),
        *_decode_and_save("WanFlow/ti2v_5b", fps=24.0),
    ]
    return "Wan 2.2 TI2V-5B", nodes, [Column("Load models", [2, 4, 6]), Column("Prompt", [5, 11, 7]), Column("Sample", [8]),
                   Column("Decode and save", [9, 10])]


def r2v_vace() -> Template:
    model, vae = _model(REPO_21, "diffusion_models", VACE_14B), _model(REPO_21, "vae", VAE_21)
    umt5 = _model(REPO_21, "text_encoders", UMT5)
    nodes = [
        _files_note(1, "Reference-to-video with Wan 2.1 VACE", [_row(m) for m in (model, umt5, vae)],
                    "Put up to four reference pictures in the `input` folder; each is letterboxed on white to the "
                    "video size, as in the official VACE code, and trimmed from the result before decoding. "
                    "Official settings: 832x480, 81 frames at 16 fps, 50 UniPC steps, shift 16, guidance 5."),
        Node(2, "WanFlowModelLoader", {"model_name": VACE_14B}, models=[model]),
        *_text_nodes(R2V_PROMPT, REPO_21),
        Node(6, "WanFlowVAELoader", {"vae_name": VAE_21}, models=[vae]),
        Node(11, "LoadImage", {"image": "reference_1.png"}, title="Reference 1", size=(320.0, 320.0)),
        Node(12, "LoadImage", {"image": "reference_2.png"}, title="Reference 2", size=(320.0, 320.0)),
        Node(7, "WanFlowReferenceToVideo", {"width": 832, "height": 480, "length": 81, "strength": 1.0},
             links={"conditioning": (5, 0), "vae": (6, 0), "reference_1": (11, 0), "reference_2": (12, 0)}),
        Node(8, "WanFlowMoESampler", {"seed": 42, "steps": 50, "shift": 16.0, "solver": "unipc", "scheduler": "unipc",
              "cfg_high": 5.0, "cfg_low": 5.0, "boundary": 0.0, "denoise": 1.0},
             links={"model_high": (2, 0), "conditioning": (7, 0), "latent": (7, 1)}),
        *_decode_and_save("WanFlow/r2v_vace"),
    ]
    return "Wan 2.1 VACE reference-to-video", nodes, [Column("Load models and pictures", [2, 4, 6, 11, 12]), Column("Prompt", [5, 7]), Column("Sample", [8]),
                   Column("Decode and save", [9, 10])]


def r2v_vace_a14b() -> Template:
    """Wan2.2-VACE-Fun-A14B: VACE blocks on both Wan 2.2 T2V-A14B experts, so the reference
    conditioning of one Reference to Video node drives both, switched like T2V-A14B."""
    high = _model(REPO_22, "diffusion_models", VACE_FUN_HIGH)
    low = _model(REPO_22, "diffusion_models", VACE_FUN_LOW)
    vae, umt5 = _model(REPO_22, "vae", VAE_21), _model(REPO_22, "text_encoders", UMT5)
    nodes = [
        _files_note(1, "Reference-to-video with Wan 2.2 A14B VACE (Wan2.2-VACE-Fun)",
                    [_row(m) for m in (high, low, umt5, vae)],
                    "Wan2.2-VACE-Fun-A14B (Alibaba PAI) adds VACE to both Wan 2.2 A14B experts; it uses the Wan 2.1 "
                    "VAE. Put up to four reference pictures in the `input` folder; each is letterboxed on white to "
                    "the video size and trimmed from the result before decoding. Settings of its authors' "
                    "subject-to-video example: 832x480, 81 frames at 16 fps, 50 UniPC steps, shift 12, guidance 5 "
                    "on both experts, expert switch at t = 875 (boundary 0 = automatic)."),
        *_expert_loaders(high, low),
        *_text_nodes(R2V_PROMPT),
        Node(6, "WanFlowVAELoader", {"vae_name": VAE_21}, models=[vae]),
        Node(11, "LoadImage", {"image": "reference_1.png"}, title="Reference 1", size=(320.0, 320.0)),
        Node(12, "LoadImage", {"image": "reference_2.png"}, title="Reference 2", size=(320.0, 320.0)),
        Node(7, "WanFlowReferenceToVideo", {"width": 832, "height": 480, "length": 81, "strength": 1.0},
             links={"conditioning": (5, 0), "vae": (6, 0), "reference_1": (11, 0), "reference_2": (12, 0)}),
        Node(8, "WanFlowMoESampler", {"seed": 42, "steps": 50, "shift": 12.0, "solver": "unipc", "scheduler": "unipc",
              "cfg_high": 5.0, "cfg_low": 5.0, "boundary": 0.0, "denoise": 1.0},
             links={"model_high": (2, 0), "model_low": (3, 0), "conditioning": (7, 0), "latent": (7, 1)}),
        *_decode_and_save("WanFlow/r2v_vace_a14b"),
    ]
    # Two experts and two pictures make one column too tall to open readable: the pictures go
    # with the prompt, the VACE conditioning beside the sampler it feeds.
    return "Wan 2.2 A14B VACE reference-to-video", nodes, [
        Column("Load models", [2, 3, 4, 6]), Column("Prompt", [5, 11, 12]), Column("Sample", [7, 8]),
        Column("Decode and save", [9, 10])]


def s2v_phantom() -> Template:
    """Phantom-Wan-14B: subject pictures joined to the video in time, three guided passes per step."""
    model = {"name": PHANTOM_14B, "url": f"{REPO_KIJAI}/{PHANTOM_14B}", "directory": "diffusion_models"}
    vae, umt5 = _model(REPO_21, "vae", VAE_21), _model(REPO_21, "text_encoders", UMT5)
    nodes = [
        _files_note(1, "Subject-to-video with Phantom-Wan 14B", [_row(m) for m in (model, umt5, vae)],
                    "Phantom-Wan (ByteDance) is a Wan 2.1 text-to-video model trained to put the subjects of 1-4 "
                    "pictures in the video; the 1.3B file (Phantom-Wan-1_3B_fp16.safetensors) works the same way. "
                    "Put the pictures in the `input` folder. Official settings: 832x480, 81 frames at 16 fps, 50 "
                    "UniPC steps, shift 5, text guidance 7.5 (the sampler's cfg) and picture guidance 5.0 (image_cfg "
                    "on Subject to Video): three model passes per step."),
        Node(2, "WanFlowModelLoader", {"model_name": PHANTOM_14B}, models=[model]),
        *_text_nodes(S2V_PROMPT, REPO_21),
        Node(6, "WanFlowVAELoader", {"vae_name": VAE_21}, models=[vae]),
        Node(11, "LoadImage", {"image": "reference_1.png"}, title="Subject 1", size=(320.0, 320.0)),
        Node(12, "LoadImage", {"image": "reference_2.png"}, title="Subject 2", size=(320.0, 320.0)),
        Node(7, "WanFlowSubjectToVideo", {"width": 832, "height": 480, "length": 81, "image_cfg": 5.0, "fit": "pad"},
             links={"conditioning": (5, 0), "vae": (6, 0), "subject_1": (11, 0), "subject_2": (12, 0)}),
        Node(8, "WanFlowMoESampler", {"seed": 42, "steps": 50, "shift": 5.0, "solver": "unipc", "scheduler": "unipc",
              "cfg_high": 7.5, "cfg_low": 7.5, "boundary": 0.0, "denoise": 1.0},
             links={"model_high": (2, 0), "conditioning": (7, 0), "latent": (7, 1)}),
        *_decode_and_save("WanFlow/s2v_phantom"),
    ]
    return "Wan 2.1 Phantom subject-to-video", nodes, [
        Column("Load models and pictures", [2, 4, 6, 11, 12]), Column("Prompt", [5, 7]), Column("Sample", [8]),
        Column("Decode and save", [9, 10])]


def lora_stack_4step() -> Template:
    title, nodes, _ = t2v_a14b()
    lx_high = _model(REPO_22, "loras", LIGHTX2V_HIGH)
    lx_low = _model(REPO_22, "loras", LIGHTX2V_LOW)
    files = [_row(m) for m in (_model(REPO_22, "diffusion_models", T2V_HIGH), _model(REPO_22, "diffusion_models", T2V_LOW),
                               _model(REPO_22, "text_encoders", UMT5), _model(REPO_22, "vae", VAE_21), lx_high, lx_low)]
    by_id = {node.id: node for node in nodes}
    by_id[1] = _files_note(1, "Wan 2.2 A14B with a LoRA style stack and the 4-step lightx2v LoRAs", files,
                           "Pick your own style LoRAs in the two *Style* nodes (`models/loras/`); a Wan 2.2 style LoRA "
                           "usually comes as a high/low pair, a Wan 2.1 one goes on the low-noise expert. The lightx2v "
                           "pair distils sampling to 4 steps at guidance 1 (no negative pass), switching experts after "
                           "2 steps.")
    by_id[12] = Node(12, "WanFlowLoraSelect", {"lora_high": "style_a_high_noise.safetensors", "strength_high": 1.0,
                      "lora_low": "style_a_low_noise.safetensors", "strength_low": 1.0}, title="Style A")
    by_id[13] = Node(13, "WanFlowLoraSelect", {"lora_high": "none", "strength_high": 0.0,
                      "lora_low": "style_b_wan21.safetensors", "strength_low": 0.8},
                     links={"lora_stack": (12, 0)}, title="Style B (Wan 2.1 LoRA, low-noise expert)")
    by_id[14] = Node(14, "WanFlowLoraSelect", {"lora_high": LIGHTX2V_HIGH, "strength_high": 1.0, "lora_low": LIGHTX2V_LOW,
                      "strength_low": 1.0}, links={"lora_stack": (13, 0)}, title="lightx2v 4-step", models=[lx_high, lx_low])
    sampler = by_id[8]
    sampler.widgets.update({"steps": 4, "shift": 5.0, "solver": "distilled", "scheduler": "distilled",
                            "cfg_high": 1.0, "cfg_low": 1.0})
    sampler.links["lora_stack"] = (14, 0)
    by_id[10].widgets["filename_prefix"] = "WanFlow/t2v_a14b_lora_4step"
    order = [1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 8, 9, 10]
    columns = [Column("Load models", [2, 3, 4, 6]), Column("Prompt", [5, 7]), Column("Sample", [12, 13, 14, 8]),
               Column("Decode and save", [9, 10])]
    return "Wan 2.2 A14B LoRA stack, 4-step lightx2v", [by_id[i] for i in order], columns


def nano_t2v() -> Template:
    """The T2V graph on the WanNano models the pack ships: runs on any CPU in seconds, no download."""
    from ..model_loaders.detect import NANO_DEFAULTS
    from ..nano.files import NANO
    from ..nano.vocabulary import BACKGROUNDS, COLOURS, DIRECTIONS, FRAMES, HEIGHT, SHAPES, WIDTH

    title, nodes, columns = t2v_a14b()
    defaults = NANO_DEFAULTS[("2.2", "t2v", "nano")]
    by_id = {node.id: node for node in nodes}
    words = " | ".join(", ".join(sorted(group)) for group in (COLOURS, SHAPES, DIRECTIONS, BACKGROUNDS))
    by_id[1] = note(1, "## WanNano text-to-video\n\nThe tiny Wan 2.2 A14B-style models the pack ships in "
                       "`nano/models/`: no download, a few seconds on a laptop CPU (docs/nano.md). They know one "
                       "small world; write prompts like `a red circle moving slowly left on a white background` "
                       "with these words:\n\n| Colour | Shape | Direction | Background |\n|---|---|---|---|\n"
                       f"| {words} |\n\nWith real Wan 2.2 files, open the *Wan 2.2 A14B text-to-video* template.\n",
                    title="Read me")
    for node_id, name in ((2, NANO.t2v_high), (3, NANO.t2v_low)):
        by_id[node_id].widgets["model_name"], by_id[node_id].models = name, []
    by_id[4].widgets["text_encoder_name"], by_id[4].models = NANO.umt5, []
    by_id[5].widgets["positive"] = "a red circle moving slowly left on a white background"
    by_id[6].widgets["vae_name"], by_id[6].models = NANO.vae, []
    by_id[7].widgets.update({"width": WIDTH, "height": HEIGHT, "length": FRAMES})
    by_id[8].widgets.update({"steps": defaults.steps, "shift": defaults.shift, "cfg_high": defaults.guide_scale,
                             "cfg_low": defaults.guide_scale_low_noise})
    by_id[10].widgets.update({"filename_prefix": "WanFlow/nano_t2v", "fps": float(defaults.fps)})
    return "WanNano text-to-video (runs on any CPU)", [by_id[node.id] for node in nodes], columns


TEMPLATES: dict[str, Callable[[], Template]] = {
    "wan22_a14b_t2v": t2v_a14b,
    "wan22_a14b_i2v": i2v_a14b,
    "wan22_a14b_flf2v": flf_a14b,
    "wan22_ti2v_5b": ti2v_5b,
    "wan21_vace_r2v": r2v_vace,
    "wan22_a14b_vace_r2v": r2v_vace_a14b,
    "wan21_phantom_s2v": s2v_phantom,
    "wan22_a14b_lora_stack_4step": lora_stack_4step,
    "wanflow_nano_t2v": nano_t2v,
}


def run_with_overrides(name: str, overrides: list[str]) -> execute.RunResult:
    """Run template ``name`` headless with ``--set``-style overrides (the adapter already points at
    the models, input and output folders); returns the runner's result."""
    classes = node_classes()
    flow = workflow.load_workflow(render(name, classes), classes, name)
    workflow.apply_overrides(flow.prompt, overrides, classes)
    return execute.run(flow, classes)


def render(name: str, classes: dict[str, type] | None = None) -> dict:
    """The UI workflow of template ``name``."""
    title, nodes, columns = TEMPLATES[name]()
    return build(nodes, classes or node_classes(), title, columns)


def thumbnail(title: str, subtitle: str) -> "Image.Image":
    """A plain title card: ComfyUI's template browser shows ``<name>.jpg`` next to the JSON."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = 512, 288
    y = _gradient(width, height)
    card = Image.fromarray(y)
    draw = ImageDraw.Draw(card)
    try:
        big, small = ImageFont.load_default(size=30), ImageFont.load_default(size=18)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        big = small = ImageFont.load_default()
    draw.text((28, 28), "WanFlow", fill=(255, 255, 255), font=small)
    y = 100.0
    for line in _wrapped(draw, title, big, width - 56):
        draw.text((28, y), line, fill=(255, 255, 255), font=big)
        y += 38
    y += 12
    for line in _wrapped(draw, subtitle, small, width - 56):
        draw.text((28, y), line, fill=(220, 230, 255), font=small)
        y += 24
    return card


def _wrapped(draw, text: str, font, width: float) -> list[str]:
    """``text`` broken between words into lines no wider than ``width`` pixels (a word longer
    than a line stays whole)."""
    lines: list[str] = []
    for word in text.split(" "):
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(trial, font=font) <= width:
            lines[-1] = trial
        else:
            lines.append(word)
    return lines


def _gradient(width: int, height: int):
    """A dark blue-violet diagonal gradient as a uint8 array."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    t = (x / width + y / height) / 2
    rgb = np.stack([40 + 60 * t, 30 + 30 * t, 90 + 80 * t], axis=-1)
    return rgb.astype(np.uint8)


def as_text(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


README = WORKFLOWS_DIR.parent / "README.md"
TABLE_START = "<!-- template files: written by python -m wanflow.runner.templates -->"
TABLE_END = "<!-- end of template files -->"


def files_table(workflows: dict[str, dict]) -> str:
    """The README's table: each template, the files it needs, their folder and download link."""
    rows = ["| Template | Files (download) | Folder |", "|---|---|---|"]
    for name, flow in workflows.items():
        seen: dict[str, dict] = {}
        for node in flow["nodes"]:
            for model in node.get("properties", {}).get("models", []):
                seen.setdefault(model["name"], model)
        title = flow["extra"]["info"]["title"]
        if not seen:
            rows.append(f"| {title} (`{name}.json`) | none: the WanNano files ship with the pack | `nano/models/` |")
        for index, model in enumerate(seen.values()):
            label = f"{title} (`{name}.json`)" if index == 0 else ""
            rows.append(f"| {label} | [{model['name']}]({model['url']}) | `models/{model['directory']}/` |")
    return "\n".join(rows)


def readme_with_table(text: str, table: str) -> str:
    """``text`` with the generated table between the markers (which must be there)."""
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    return text[:start] + "\n" + table + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate workflows/*.json from the template descriptions.")
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    args = parser.parse_args(argv)
    stale = []
    workflows = {name: render(name) for name in TEMPLATES}
    for name, workflow in workflows.items():
        path = WORKFLOWS_DIR / f"{name}.json"
        text = as_text(workflow)
        picture = path.with_suffix(".jpg")
        if not picture.exists() and not args.check:
            title = workflow["extra"]["info"]["title"]
            thumbnail(title, "ComfyUI template  |  wanflow run " + path.name).save(picture, quality=85)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path.name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    updated = readme_with_table(readme, files_table(workflows))
    if updated != readme:
        stale.append(README.name)
        if not args.check:
            README.write_text(updated, encoding="utf-8")
    verb = "out of date" if args.check else "written"
    print(f"{len(stale)} template(s) {verb}: {', '.join(stale) or '-'}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
