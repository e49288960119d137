"""Loader nodes on tiny files in a ComfyUI-style models folder."""
import pytest
import torch
from safetensors.torch import save_file

from wanflow.nodes import comfy_adapter as ca
from wanflow.nodes.loader_nodes import WanFlowModelLoader
from wanflow.wan.dit import WanDiT, WanDiTConfig

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
    assert choices == ["wan2.2_t2v_high_noise_14B_tiny.safetensors"]
    assert WanFlowModelLoader.VALIDATE_INPUTS(choices[0]) is True
    out = WanFlowModelLoader().load(choices[0], "default", "sdpa")
    handle, text = out["result"]
    assert handle.variant.task == "t2v" and handle.variant.expert == "high"
    assert "high-noise expert" in text and out["ui"]["text"] == [text]
    assert next(handle.model.parameters()).dtype == torch.bfloat16
    fp8 = WanFlowModelLoader().load(choices[0], "fp8_e4m3fn", "sdpa")["result"][0]
    assert fp8.model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn


def test_model_loader_bad_names(models):
    with pytest.raises(ca.MissingFile, match="model loader: model_name: 'nope.safetensors' not found"):
        WanFlowModelLoader.VALIDATE_INPUTS("nope.safetensors")
    with pytest.raises(ca.UnsafeFileName, match="'..'"):
        WanFlowModelLoader.VALIDATE_INPUTS("../diffusion_models/x.safetensors")
