"""Two-expert low-RAM mode (issue 11): "reload from disk" on the model loader frees an expert's
weights while it is not sampling and reads them back from its file, with the same results."""
import pytest
import torch
from safetensors.torch import save_file

from lora_fixtures import default_targets, make_spec, write_comfyui_ab, write_lightx2v_diffs
from wanflow.model_loaders.dit_loader import load_dit, reload_dit
from wanflow.model_loaders.parking import DiskBacked, is_parked
from wanflow.nodes import comfy_adapter as ca
from wanflow.nodes.loader_nodes import WanFlowModelLoader
from wanflow.nodes.lora_nodes import WanFlowLoraSelect
from wanflow.nodes.sampler_nodes import WanFlowMoESampler
from wanflow.samplers.conditioning import WanConditioning
from wanflow.runner.tiny_models import FILES, write_tiny_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("low_ram") / "models"
    write_tiny_models(root)
    high = load_dit(root / "diffusion_models" / FILES.t2v_high).model
    spec = make_spec(high, default_targets(high.config), rank=2)
    diffs, _ = write_lightx2v_diffs(high)  # modulation and norm diffs: tensors the stack bakes
    save_file({**write_comfyui_ab(spec), **diffs}, str(root / "loras" / "style.safetensors"))
    yield root
    ca.configure_headless(None, None, None)


@pytest.mark.parametrize("storage", [None, "fp8_e4m3fn_scaled"])
def test_a_parked_model_reads_back_bit_for_bit(models, storage):
    path = models / "diffusion_models" / FILES.t2v_high
    model = load_dit(path, storage).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parked = DiskBacked(model, lambda m: reload_dit(path, m, storage), path.name)
    parked.park()
    assert is_parked(model) and all(t.device.type == "meta" for t in model.state_dict().values())
    parked.restore(torch.device("cpu"))
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) and after[k].dtype == before[k].dtype for k in before)


def _sample(models, mode: str) -> tuple[torch.Tensor, list]:
    ca.configure_headless(models, models.parent / "in", models.parent / "out")
    ca.set_headless_progress(False)
    loader = WanFlowModelLoader()
    high = loader.load(FILES.t2v_high, "default", "sdpa", mode)["result"][0]
    low = loader.load(FILES.t2v_low, "default", "sdpa", mode)["result"][0]
    (stack,) = WanFlowLoraSelect().select("style.safetensors", 0.8, "style.safetensors", 0.6)
    torch.manual_seed(5)
    text_dim = high.model.config.text_dim
    cond = WanConditioning(context=torch.randn(1, 8, text_dim), negative_context=torch.zeros(1, 8, text_dim))
    out = WanFlowMoESampler().sample(high, cond, {"samples": torch.zeros(1, 16, 2, 4, 4)}, seed=3, steps=4,
                                     shift=5.0, solver="unipc", scheduler="unipc", cfg_high=4.0, cfg_low=3.0,
                                     boundary=0.0, denoise=1.0, model_low=low, lora_stack=stack)
    return out["result"][0]["samples"], [high, low]


def test_reload_from_disk_samples_exactly_like_keeping_the_experts_in_ram(models):
    kept, _ = _sample(models, "keep")
    reloaded, handles = _sample(models, "reload from disk")
    torch.testing.assert_close(reloaded, kept, rtol=0, atol=0)
    for handle in handles:  # after the run both experts wait on disk again, with the stack taken off
        assert is_parked(handle.model) and not handle.parking.after_restore
        assert all(not getattr(m, "adapters", []) for m in handle.model.modules())
    again, _ = _sample(models, "reload from disk")  # a second run reads them back the same way
    torch.testing.assert_close(again, kept, rtol=0, atol=0)
