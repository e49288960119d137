"""The pack inside a real ComfyUI server (headless, CPU), driven by the shared harness.

Runs when ComfyUI's source is at hand (by default the tarball in ../shared/comfyui beside the
checkout, so CI runs it; about 2.5 minutes with a fresh build); see tests/comfyui_setup.py for
the settings and docs/comfyui-check.md."""
import json
import urllib.request
from pathlib import Path

import pytest

from comfyui_setup import HARNESS, PACK_NAME, ROOT, requires_comfyui, run as _run, run_in_comfyui

TEMPLATE_NAMES = [p.stem for p in (ROOT / "workflows").glob("*.json")]
pytestmark = requires_comfyui


def test_object_info_lists_every_node(server):
    from wanflow.nodes import NODE_CLASS_MAPPINGS

    with urllib.request.urlopen(server["url"] + "/object_info", timeout=120) as response:
        info = json.loads(response.read())
    ours = {name for name, entry in info.items() if entry.get("python_module") == f"custom_nodes.{PACK_NAME}"}
    assert ours == set(NODE_CLASS_MAPPINGS)
    for name in ours:
        assert info[name]["category"].startswith("WanFlow")


def test_check_pack_and_templates(server):
    args = [HARNESS / "check_pack.py", "--server", server["url"], "--pack-prefix", PACK_NAME]
    if any((ROOT / "workflows").glob("*.json")):
        args.append("--require-templates")
    result = _run(args, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(TEMPLATE_NAMES))
def test_template_executes_on_tiny_models(server, name):
    """The template, converted to an API prompt against /object_info, runs in ComfyUI and saves a video."""
    from wanflow.runner.tiny_runs import TINY_OVERRIDES

    sets = [arg for item in TINY_OVERRIDES[name] for arg in ("--set", item)]
    result = _run([HARNESS / "run_workflow.py", "--server", server["url"], ROOT / "workflows" / f"{name}.json",
                   *sets, "--min-files", "1", "--timeout", "600"], timeout=700)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert ".mp4" in result.stdout


def test_context_windows_run_in_comfyui(server):
    """The T2V template with the sampler's context-window widgets set (a clip of 3 windows) runs in ComfyUI."""
    from wanflow.runner.tiny_runs import TINY_OVERRIDES

    name = "wan22_a14b_t2v"
    overrides = [o for o in TINY_OVERRIDES[name] if not o.startswith("7.length=")]
    overrides += ["7.length=17", "8.context_window=9", "8.context_overlap=4", "8.context_blend=uniform",
                  "8.drift_control=true", "8.context_anchor=true"]
    sets = [arg for item in overrides for arg in ("--set", item)]
    result = _run([HARNESS / "run_workflow.py", "--server", server["url"], ROOT / "workflows" / f"{name}.json",
                   *sets, "--min-files", "1", "--timeout", "600"], timeout=700)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert ".mp4" in result.stdout



def _full_size_vae(work: Path, version: str = "2.1") -> Path:
    """A random Wan VAE file at the released size (ComfyUI builds each Wan VAE at that size only).

    The Wan 2.2 VAE (705M parameters) is written in bf16: 1.4 GB instead of 2.8."""
    import torch
    from safetensors.torch import save_file

    from wanflow.wan.vae2_1 import WanVAE21
    from wanflow.wan.vae2_2 import WanVAE22

    vae_file = work / f"wanflow_full_random_wan{version}_vae.safetensors"
    if not vae_file.exists():
        torch.manual_seed(0)
        model, dtype = (WanVAE21(), torch.float32) if version == "2.1" else (WanVAE22(), torch.bfloat16)
        partial = vae_file.with_suffix(".partial")
        save_file({k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}, str(partial))
        partial.rename(vae_file)
    return vae_file


def test_latent_convention_matches_core_vae(server):
    """Core VAEEncode / VAEDecode and ours agree on one (random, full-size) Wan 2.1 VAE file: LATENT is raw mu."""
    report = run_in_comfyui(server["work"], "latent_check.py", _full_size_vae(server["work"]), ROOT)
    assert report["core_latent_shape"] == report["our_latent_shape"] == [1, 16, 2, 4, 4]
    assert report["encode_max_diff"] < 1e-4 * max(1.0, report["latent_scale"])
    assert report["core_frames_shape"] == report["our_frames_shape"] == [5, 32, 32, 3]
    assert report["decode_max_diff"] < 1e-4 and report["core_latent_through_our_decode_max_diff"] < 1e-4


def test_subject_to_video_matches_core_phantom_and_dual_cfg_guider(server):
    """Phantom: core WanPhantomSubjectToVideo + DualCFGGuider (regular) and WanFlow Subject to Video + our
    MoE sampler give the same subject latents (two pictures, centre-cropped, one frame each) and the same
    result after one and three guided Euler steps, on core's MODEL and on our DiT from the same file."""
    models = server["work"] / "ComfyUI" / "models"
    report = run_in_comfyui(server["work"], "phantom_check.py", ROOT, models, _full_size_vae(server["work"]))
    assert report["core_subjects_shape"] == report["our_subjects_shape"] == [1, 16, 2, 4, 4], report
    assert report["subjects_max_diff"] < 1e-5 * max(1.0, report["subjects_scale"]), report
    assert report["core_zero_subjects_max"] == 0.0, report  # core's "no pictures" is zero in the model's space
    assert report["core_latent_shape"] == report["our_latent_shape"] == [1, 16, 2, 4, 4], report
    for steps in (1, 3):
        assert report[f"result_shape_{steps}"] == [1, 16, 2, 4, 4], report  # subject frames cut off
        tolerance = 2e-5 * max(1.0, report[f"scale_{steps}"])
        assert report[f"core_model_max_diff_{steps}"] < tolerance, report
        assert report[f"our_dit_max_diff_{steps}"] < tolerance, report


@pytest.mark.parametrize("kind, vae_version, channels, size", [("a14b", "2.1", 16, 4), ("5b", "2.2", 48, 2)])
def test_first_last_frame_condition_matches_core_flf_and_fun_inpaint_nodes(server, kind, vae_version, channels, size):
    """Core WanFirstLastFrameToVideo and WanFunInpaintToVideo, and our Image to Video, give the DiT the
    same concat condition (4 mask channels + normalised image latent) for a start image, an end image,
    both, and 6 start + 2 end frames: on a Wan 2.2 I2V-architecture expert (I2V-A14B / Fun-A14B-InP)
    with the Wan 2.1 VAE, and on a Fun-5B-InP-architecture model with the Wan 2.2 VAE."""
    report = run_in_comfyui(server["work"], "flf_check.py", _full_size_vae(server["work"], vae_version), ROOT, kind)
    assert report["variant"].startswith("Wan 2.2 I2V"), report["variant"]
    assert report["variant"].endswith("(high-noise expert)") == (kind == "a14b"), report["variant"]  # 5B: one model
    known = {"start": [1, 0, 0], "end": [0, 0, 1], "start+end": [1, 0, 1], "6 starts+2 ends": [1, 1, 1]}
    assert len(report["cases"]) == 8
    for name, case in report["cases"].items():
        assert case["core_shape"] == case["our_shape"] == [1, channels + 4, 3, size, size], (name, case)
        assert case["known_latent_frames"] == known[name.split(":")[1]], (name, case)
        assert case["mask_max_diff"] == 0.0, (name, case)
        assert case["latent_max_diff"] < 1e-4 * max(1.0, case["latent_scale"]), (name, case)
    # pixel frames 0-5 and 7-8 of 9 are given; frame 0 fills the first latent frame's 4 slots
    for node in ("WanFirstLastFrameToVideo", "WanFunInpaintToVideo"):
        assert report["cases"][f"{node}:6 starts+2 ends"]["known_slots"] == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 1]]


def test_template_browser_serves_templates_and_thumbnails(server):
    with urllib.request.urlopen(server["url"] + "/workflow_templates", timeout=60) as response:
        listed = json.loads(response.read())
    assert sorted(listed[PACK_NAME]) == sorted(TEMPLATE_NAMES)
    for name in TEMPLATE_NAMES:
        for suffix, kind in ((".json", "application/json"), (".jpg", "image/jpeg")):
            url = f"{server['url']}/api/workflow_templates/{PACK_NAME}/{name}{suffix}"
            with urllib.request.urlopen(url, timeout=60) as response:
                assert response.status == 200 and response.headers["Content-Type"].startswith(kind)


def test_missing_model_file_is_reported_on_the_node(server):
    """Without the official files ComfyUI rejects the prompt, naming each loader and what it searched."""
    result = _run([HARNESS / "run_workflow.py", "--server", server["url"], ROOT / "workflows" / "wan22_a14b_t2v.json"],
                  timeout=300)
    assert result.returncode == 2, result.stdout[-3000:]
    assert "custom_validation_failed" in result.stdout
    assert "'wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors' not found in diffusion_models" in result.stdout


def test_frontend_extension_is_served(server):
    """ComfyUI lists web/wanflow.js (status lines on the loader and the empty latent) among the frontend extensions."""
    with urllib.request.urlopen(server["url"] + "/extensions", timeout=60) as response:
        extensions = json.loads(response.read())
    path = f"/extensions/{PACK_NAME}/wanflow.js"
    assert path in extensions
    with urllib.request.urlopen(server["url"] + path, timeout=60) as response:
        assert response.status == 200 and b"WanFlowModelLoader" in response.read()


NANO_CASES = {
    # task: (prompt, the scene the video must show, LoadImage overrides)
    "t2v": ("a blue square moving up on a black background", ("blue", "square", "up", "black"), {}),
    "i2v": ("a red circle moving right on a white background", ("red", "circle", "right", "white"),
            {"11.image": "nano_start_image.png"}),
    "r2v": ("a green triangle moving left on a black background", ("yellow", "circle", "left", "black"),
            {"11.image": "nano_reference_1.png", "12.image": "nano_reference_2.png"}),
}


def _write_nano_inputs(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    from wanflow.nano.clips import random_placement, reference_picture, render_clip
    from wanflow.nano.vocabulary import Scene

    folder.mkdir(parents=True, exist_ok=True)
    start = Scene("red", "circle", "right", "white")
    Image.fromarray(render_clip(start, random_placement(start, np.random.default_rng(0)))[0]).save(
        folder / "nano_start_image.png")
    reference = Scene("yellow", "circle", "left", "black")
    for index, size in enumerate((28.0, 24.0)):
        Image.fromarray(reference_picture(reference, size)).save(folder / f"nano_reference_{index + 1}.png")


@pytest.mark.parametrize("task", sorted(NANO_CASES))
def test_template_on_the_nano_models_shows_the_prompt(server, task):
    """The template runs in ComfyUI on the nano files (served from the pack's own folder) and its
    frames show the prompt (R2V: the references' colour, whatever the prompt names)."""
    import numpy as np
    from PIL import Image

    from wanflow.nano.measure import read_video
    from wanflow.runner.nano_runs import NANO_OVERRIDES, TEMPLATE_FOR_TASK

    prompt, (colour, shape, direction, background), images = NANO_CASES[task]
    _write_nano_inputs(server["work"] / "ComfyUI" / "input")
    name, prefix = TEMPLATE_FOR_TASK[task], f"wanflow_nano_check/{task}"
    output = server["work"] / "ComfyUI" / "output" / "wanflow_nano_check"
    for old in output.glob(f"{task}*.png"):
        old.unlink()
    sets = [*NANO_OVERRIDES[name], f"5.positive={prompt}", "8.seed=1", "10.format=png",
            f"10.filename_prefix={prefix}", *(f"{k}={v}" for k, v in images.items())]
    if task == "t2v":  # the two-expert low-RAM mode, inside ComfyUI
        sets += ["2.weights_in_ram=reload from disk", "3.weights_in_ram=reload from disk"]
    result = _run([HARNESS / "run_workflow.py", "--server", server["url"], ROOT / "workflows" / f"{name}.json",
                   *[arg for item in sets for arg in ("--set", item)], "--min-files", "17", "--timeout", "600"],
                  timeout=700)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(output.glob(f"{task}*.png"))])
    reading = read_video(frames)
    assert (reading.background, reading.colour, reading.direction) == (background, colour, direction), reading
    if task == "i2v":  # the start picture carries the shape; T2V reads 18 of 24 shapes (test_nano_t2v),
        assert reading.shape == shape, reading  # R2V 3 of 4 (test_nano_r2v), so one video is no test


def test_trained_lora_loads_in_core_lora_loader_with_every_key(server, tmp_path):
    """A LoRA from our trainer, on a core ComfyUI Wan model through core LoraLoaderModelOnly: no key
    left unmatched, every adapted weight changes, and by exactly scale * B @ A."""
    import torch

    from safetensors.torch import save_file

    from wanflow.model_loaders.dit_loader import load_dit
    from wanflow.train.loop import LoopConfig
    from wanflow.train.lora_trainer import LoraTrainConfig, train_lora
    from wanflow.wan.dit import WanDiT
    from wanflow.wan.dit_config import WanDiTConfig

    models = server["work"] / "ComfyUI" / "models"
    # core ComfyUI builds Wan with umT5-XXL's text width, so the tiny model needs text_dim 4096
    model_file = models / "diffusion_models" / "wanflow_tiny_text4096_wan2.2_t2v_high_noise.safetensors"
    torch.manual_seed(0)
    tiny = WanDiT(WanDiTConfig(dim=128, ffn_dim=64, num_heads=1, num_layers=2, text_dim=4096, model_type="t2v"))
    save_file({"model.diffusion_model." + k: v.to(torch.bfloat16).contiguous() for k, v in tiny.state_dict().items()},
              str(model_file))
    model = load_dit(model_file).model.float()

    class Data:
        latents = torch.randn(2, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
        caption_index = torch.zeros(2, dtype=torch.long)
        i2v_y = None
        contexts = torch.randn(1, 512, model.config.text_dim, generator=torch.Generator().manual_seed(1))
        uncond = torch.zeros(1, 512, model.config.text_dim)

    cfg = LoraTrainConfig(shift=5.0, loop=LoopConfig(steps=3, lr=1e-2, warmup=1), expert="high")
    trained = train_lora(model, Data, Data, cfg, tmp_path / "work", quiet=True)
    lora_file = models / "loras" / "wanflow_trained_check.safetensors"
    lora_file.unlink(missing_ok=True)
    trained.save(lora_file, model_file.name)
    try:
        report = run_in_comfyui(server["work"], "core_lora_check.py", model_file, lora_file)
    finally:
        lora_file.unlink(missing_ok=True)
    adapted = {path + ".weight" for path, _ in trained.network.items()}
    assert report["unmatched"] == []
    assert set(report["changed"]) == adapted
    adapter = dict(trained.network.items())["blocks.0.self_attn.q"]
    expected = (adapter.up @ adapter.down).detach() * trained.config.lora.scale
    assert expected.abs().max() > 1e-2                      # the LoRA did learn something
    # core keeps the tiny file's bf16 weights, so the patched weight is rounded to bf16
    torch.testing.assert_close(torch.tensor(report["delta"]), expected, atol=1e-3, rtol=2e-2)
