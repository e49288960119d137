"""The ComfyUI adapter outside ComfyUI: folders, names, interruption, progress, output counters."""
import pytest
import torch

from wanflow.nodes import comfy_adapter as ca


@pytest.fixture()
def models(tmp_path, monkeypatch):
    monkeypatch.setattr(ca, "NANO_MODELS_DIR", tmp_path / "no-pack-models")
    root = tmp_path / "models"
    for sub in ("diffusion_models", "unet", "vae", "clip", "loras/style"):
        (root / sub).mkdir(parents=True)
    (root / "diffusion_models" / "a.safetensors").write_bytes(b"x")
    (root / "unet" / "b.gguf").write_bytes(b"x")
    (root / "unet" / "readme.txt").write_text("not a model")
    (root / "vae" / "wan_2.1_vae.safetensors").write_bytes(b"x")
    (root / "clip" / "umt5.safetensors").write_bytes(b"x")
    (root / "loras" / "style" / "ink.safetensors").write_bytes(b"x")
    ca.configure_headless(root, tmp_path / "input", tmp_path / "output")
    yield root
    ca.configure_headless(None, None, None)
    ca._headless.models_dir = None


def test_not_in_comfyui_when_forced(models):
    assert not ca.in_comfyui()
    assert ca.compute_device().type in ("cpu", "cuda")
    assert ca.offload_device() == torch.device("cpu")
    assert ca.text_encoder_device(on_cpu=True) == torch.device("cpu")


def test_lists_comfyui_folder_aliases(models):
    assert ca.list_models("diffusion_models") == ["a.safetensors", "b.gguf"]
    assert ca.list_models("text_encoders") == ["umt5.safetensors"]
    assert ca.list_models("loras") == ["style/ink.safetensors"]
    assert ca.model_path("diffusion_models", "b.gguf") == str(models / "unet" / "b.gguf")
    assert ca.model_path("loras", "style/ink.safetensors").endswith("ink.safetensors")


def test_pack_nano_models_are_listed_after_the_users(models, tmp_path, monkeypatch):
    pack = tmp_path / "pack-models"
    (pack / "vae").mkdir(parents=True)
    (pack / "vae" / "wan2.1_nano_vae.safetensors").write_bytes(b"x")
    (pack / "clip_vision").mkdir()
    (pack / "clip_vision" / "not_offered.safetensors").write_bytes(b"x")
    monkeypatch.setattr(ca, "NANO_MODELS_DIR", pack)
    assert ca.list_models("vae") == ["wan2.1_nano_vae.safetensors", "wan_2.1_vae.safetensors"]
    assert ca.model_path("vae", "wan2.1_nano_vae.safetensors") == str(pack / "vae" / "wan2.1_nano_vae.safetensors")
    assert ca.list_models("clip_vision") == []
    ca.configure_headless(None, None, None)
    ca._headless.models_dir = None
    assert ca.list_models("vae") == ["wan2.1_nano_vae.safetensors"]  # no --models: the nano files alone


def test_missing_model_names_folders(models):
    with pytest.raises(ca.MissingFile, match=r"model loader: 'nope.safetensors' not found in diffusion_models"):
        ca.model_path("diffusion_models", "nope.safetensors", "model loader")
    with pytest.raises(KeyError, match="unknown model folder"):
        ca.list_models("checkpoints")


@pytest.mark.parametrize("name", ["../secret.safetensors", "a/../../b", "/etc/passwd", "..\\x", "C:\\x", ""])
def test_unsafe_names_rejected(models, name):
    with pytest.raises(ca.UnsafeFileName, match="vae"):
        ca.model_path("vae", name, "vae")


def test_input_path_checks(models, tmp_path):
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "cat.png").write_bytes(b"x")
    assert ca.input_path("cat.png").endswith("cat.png")
    with pytest.raises(ca.MissingFile, match="dog.png"):
        ca.input_path("dog.png")
    with pytest.raises(ca.UnsafeFileName):
        ca.input_path("../input/cat.png")


def test_interrupt_raises_once(models):
    ca.check_interrupted()
    ca.request_interrupt()
    with pytest.raises(ca.Interrupted):
        ca.check_interrupted()
    ca.check_interrupted()


def test_progress_counts(models):
    ca.set_headless_progress(False)
    with ca.Progress(3, "test") as bar:
        bar.update()
        bar.update(5)
    assert bar.value == 3
    ca.set_headless_progress(True)


def test_output_counter_continues_and_never_overwrites(models, tmp_path):
    out = tmp_path / "output" / "clips"
    out.mkdir(parents=True)
    (out / "cat_00007_.mp4").write_bytes(b"old")
    files = ca.reserve_output_file("clips/cat", "mp4", count=2)
    assert files.names == ["cat_00008_.mp4", "cat_00009_.mp4"]
    assert files.subfolder == "clips"
    with pytest.raises(ca.UnsafeFileName):
        ca.reserve_output_file("../cat", "mp4")


def test_staged_outputs_appear_only_on_commit(models, tmp_path):
    ca.begin_staged_outputs()
    files = ca.reserve_output_file("v", "webp")
    files.paths[0].write_bytes(b"data")
    assert not (tmp_path / "output" / "v_00001_.webp").exists()
    second = ca.reserve_output_file("v", "webp")  # counts files staged in this run
    assert second.names == ["v_00002_.webp"]
    moved = ca.commit_staged_outputs()
    assert [p.name for p in moved] == ["v_00001_.webp"]
    assert (tmp_path / "output" / "v_00001_.webp").read_bytes() == b"data"
    ca.begin_staged_outputs()
    ca.reserve_output_file("v", "webp").paths[0].write_bytes(b"x")
    ca.discard_staged_outputs()
    assert sorted(p.name for p in (tmp_path / "output").iterdir()) == ["v_00001_.webp"]


def test_headless_progress_writes_plain_lines_when_not_on_a_terminal():
    """Logs and CI get lines, never cursor codes: a tenth at a time, or one per named item (issue 11)."""
    import io

    from wanflow.nodes.headless_progress import HeadlessProgress

    out = io.StringIO()
    bar = HeadlessProgress(20, "sampling", stream=out)
    for _ in range(20):
        bar.update(1)
    named = HeadlessProgress(2, "workflow", stream=out)
    for node in ("node 2 (High-noise expert)", "node 8 (WanFlowMoESampler)"):
        named.describe(node)
        named.update(1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert lines == [f"wanflow: sampling {n}/20" for n in range(2, 21, 2)] + [
        "wanflow: workflow 1/2: node 2 (High-noise expert)", "wanflow: workflow 2/2: node 8 (WanFlowMoESampler)"]
    quiet = io.StringIO()
    HeadlessProgress(3, "decode", enabled=False, stream=quiet).update(3)
    assert quiet.getvalue() == ""
