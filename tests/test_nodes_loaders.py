"""Loader nodes on tiny files in a ComfyUI-style models folder."""
import pytest
import torch
from safetensors.torch import save_file

from wanflow.nodes import comfy_adapter as ca
from wanflow.nodes.loader_nodes import WanFlowModelLoader
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import WanDiTConfig

TINY_DIT = WanDiTConfig(dim=128, ffn_dim=64, num_heads=1, num_layers=2, text_dim=32, model_type="t2v")


@pytest.fixture()
def models(tmp_path):
    root = tmp_path / "models"
    (root / "diffusion_models").mkdir(parents=True)
    torch.manual_seed(0)
    dit = WanDiT(TINY_DIT).eval()
    save_file({"model.diffusion_model." + k: v.to(torch.bfloat16).contiguous() for k, v in dit.state_dict().items()},
              str(root / "diffusion_models" / "wan2.2_t2v_high_noise_14B_tiny.safetensors"))
    ca.configure_headless(root, tmp_path / "input", tmp_path / "output")
    yield root
    ca.configure_headless(None, None, None)
    ca._headless.models_dir = None


def test_model_loader_lists_validates_and_detects(models):
    choices = WanFlowModelLoader.INPUT_TYPES()["required"]["model_name"][0]
    name = "wan2.2_t2v_high_noise_14B_tiny.safetensors"
    assert [c for c in choices if "_nano_" not in c] == [name]   # plus the pack's own nano files
    assert WanFlowModelLoader.VALIDATE_INPUTS(name) is True
    out = WanFlowModelLoader().load(name, "default", "sdpa")
    handle, text = out["result"]
    assert handle.variant.task == "t2v" and handle.variant.expert == "high"
    assert "high-noise expert" in text and out["ui"]["text"] == [text]
    assert next(handle.model.parameters()).dtype == torch.bfloat16
    fp8 = WanFlowModelLoader().load(name, "fp8_e4m3fn", "sdpa")["result"][0]
    assert fp8.model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn


def test_model_loader_bad_names(models):
    with pytest.raises(ca.MissingFile, match="model loader: model_name: 'nope.safetensors' not found"):
        WanFlowModelLoader.VALIDATE_INPUTS("nope.safetensors")
    with pytest.raises(ca.UnsafeFileName, match="'..'"):
        WanFlowModelLoader.VALIDATE_INPUTS("../diffusion_models/x.safetensors")
    assert WanFlowModelLoader.VALIDATE_INPUTS(None) is True  # fed by a link: checked when the node runs
    with pytest.raises(ca.UnsafeFileName, match="'..'"):
        WanFlowModelLoader().load("../diffusion_models/x.safetensors", "default", "sdpa")


def test_vae_text_encoder_and_clip_loaders_on_tiny_files(tmp_path):
    from wanflow.nodes.loader_nodes import WanFlowCLIPVisionLoader, WanFlowTextEncoderLoader, WanFlowVAELoader
    from wanflow.runner.tiny_models import FILES, write_tiny_models

    write_tiny_models(tmp_path / "models")
    ca.configure_headless(tmp_path / "models", tmp_path / "input", tmp_path / "output")
    try:
        assert FILES.vae22 in WanFlowVAELoader.INPUT_TYPES()["required"]["vae_name"][0]
        (vae,) = WanFlowVAELoader().load(FILES.vae22)
        assert vae.z_dim == 48 and vae.spatial_factor == 16
        (text,) = WanFlowTextEncoderLoader().load(FILES.umt5, "cpu")
        assert text.on_cpu and text.tokenizer("a cat").ids.shape == (1, 512)
        (clip,) = WanFlowCLIPVisionLoader().load(FILES.clip_vision)
        assert clip.tower.config.dim == 80
        for cls, name in ((WanFlowVAELoader, "../x"), (WanFlowTextEncoderLoader, "/abs.safetensors"),
                          (WanFlowCLIPVisionLoader, "..\\y")):
            with pytest.raises(ca.UnsafeFileName):
                cls.VALIDATE_INPUTS(name)
        with pytest.raises(ca.MissingFile, match="VAE loader: vae_name: 'missing.safetensors' not found in vae"):
            WanFlowVAELoader.VALIDATE_INPUTS("missing.safetensors")
    finally:
        ca.configure_headless(None, None, None)
        ca._headless.models_dir = None


def test_model_loader_lists_every_attention_backend_and_refuses_one_that_cannot_run(models):
    from wanflow.wan.attention import backend_problem

    choices = WanFlowModelLoader.INPUT_TYPES()["required"]["attention"][0]
    assert choices[0] == "sdpa" and {"flash", "sage", "sdpa_fp8"} <= set(choices)
    name = "wan2.2_t2v_high_noise_14B_tiny.safetensors"
    assert WanFlowModelLoader.VALIDATE_INPUTS(name, "sdpa") is True
    assert WanFlowModelLoader.VALIDATE_INPUTS(name, None) is True  # fed by a link
    assert "unknown" in WanFlowModelLoader.VALIDATE_INPUTS(name, "xformers")
    if backend_problem("sage") is None:
        pytest.skip("sageattention runs on this machine")
    verdict = WanFlowModelLoader.VALIDATE_INPUTS(name, "sage")
    assert verdict.startswith("model loader: attention: attention backend 'sage' cannot run here")
    assert "pip install sageattention" in verdict
    with pytest.raises(ValueError, match="pip install sageattention"):  # before reading the (missing) file
        WanFlowModelLoader().load("not-there.safetensors", "default", "sage")


def test_a_saved_workflow_naming_a_missing_attention_backend_fails_before_any_node_runs(tmp_path, capsys):
    from wanflow.runner import cli, errors, templates
    from wanflow.wan.attention import backend_problem

    if backend_problem("sage") is None:
        pytest.skip("sageattention runs on this machine")
    flow = templates.WORKFLOWS_DIR / "wanflow_nano_t2v.json"  # node 2: the high-noise model loader
    code = cli.main(["run", str(flow), "--output", str(tmp_path), "--quiet", "--set", "2.attention=sage"])
    assert code == errors.EXIT_INVALID
    err = capsys.readouterr().err
    assert "node 2 (WanFlowModelLoader): model loader: attention: attention backend 'sage'" in err, err
    assert "pip install sageattention" in err
    assert not any(tmp_path.iterdir())


def test_model_loader_compiles_the_blocks_on_request(models, monkeypatch):
    from wanflow.wan import compiled_blocks

    name = "wan2.2_t2v_high_noise_14B_tiny.safetensors"
    assert WanFlowModelLoader.INPUT_TYPES()["optional"]["compile"][0] == ["off", "blocks"]
    monkeypatch.delenv(compiled_blocks.COMPILE_ENV, raising=False)
    plain = WanFlowModelLoader().load(name, "default", "sdpa")["result"][0]
    assert not compiled_blocks.is_compiled(plain.model)
    compiled = WanFlowModelLoader().load(name, "default", "sdpa", "keep", "blocks")["result"][0]
    assert compiled_blocks.is_compiled(compiled.model)
    monkeypatch.setenv(compiled_blocks.COMPILE_ENV, "1")  # wanflow run --compile
    assert compiled_blocks.is_compiled(WanFlowModelLoader().load(name, "default", "sdpa")["result"][0].model)

    monkeypatch.setattr(compiled_blocks.shutil, "which", lambda _: None)  # no C++ compiler here
    verdict = WanFlowModelLoader.VALIDATE_INPUTS(name, "sdpa", "blocks")
    assert verdict.startswith("model loader: compile: torch.compile on the CPU needs a C++ compiler"), verdict
    with pytest.raises(ValueError, match="model loader: compile: .*g\\+\\+"):
        WanFlowModelLoader().load(name, "default", "sdpa", "keep", "blocks")
