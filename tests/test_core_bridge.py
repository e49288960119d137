"""The bridges to ComfyUI's core types (nodes/core_bridge.py), outside ComfyUI.

The real-ComfyUI side (core MODEL and CONDITIONING against core KSamplerAdvanced) is in
tests/test_comfyui_models.py."""
import types

import pytest
import torch

from wanflow.nodes.core_bridge import (CoreWanModel, as_model_handle, clip_tokens_from_core,
                                       conditioning_from_core, conditioning_to_core, is_core_model)
from wanflow.nodes.core_bridge_nodes import WanFlowConditioningFromCore, WanFlowConditioningToCore
from wanflow.samplers.conditioning import WanConditioning
from wanflow.samplers.moe import MoESampler
from wanflow.samplers.schedules import build_schedule


def core_text(length: int, width: int = 8, seed: int = 0, **options) -> list:
    return [[torch.randn(1, length, width, generator=torch.Generator().manual_seed(seed)), options]]


def test_core_text_becomes_unpadded_conditioning():
    (cond,) = WanFlowConditioningFromCore().convert(core_text(77), core_text(30, seed=1))
    assert cond.context.shape == (1, 77, 8) and cond.negative_context.shape == (1, 30, 8)
    assert cond.pad_context is False and cond.model_extras() == {"pad_context": False}
    assert not cond.can_batch_guidance()          # different lengths: cond and uncond run apart
    positive, negative = WanFlowConditioningToCore().convert(cond)
    assert positive[0][0] is cond.context and negative[0][0] is cond.negative_context


@pytest.mark.parametrize("bad, message", [
    (core_text(5) + core_text(5), "2 entries"),
    (core_text(5, concat_latent_image=torch.zeros(1)), "WanFlow Image to Video"),
    (core_text(5, time_dim_concat=torch.zeros(1)), "WanFlow Subject to Video"),
    ([[torch.zeros(5, 8), {}]], "expected text embeddings"),
])
def test_core_conditioning_that_is_not_one_text_is_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message) as caught:
        conditioning_from_core(bad, None)
    assert "WanFlow Conditioning from Core: positive" in str(caught.value)


def test_only_text_conditioning_goes_out_to_core():
    cond = WanConditioning(context=torch.zeros(1, 4, 8), negative_context=torch.zeros(1, 4, 8),
                           y=torch.zeros(1, 20, 1, 2, 2))
    with pytest.raises(ValueError, match="image"):
        conditioning_to_core(cond)
    phantom = WanConditioning(context=torch.zeros(1, 4, 8), negative_context=torch.zeros(1, 4, 8),
                              subjects=torch.zeros(1, 16, 1, 2, 2))
    with pytest.raises(ValueError, match="subject pictures"):
        conditioning_to_core(phantom)


def test_core_clip_vision_output_gives_the_image_tokens():
    output = types.SimpleNamespace(penultimate_hidden_states=torch.randn(2, 257, 16))
    assert clip_tokens_from_core(output, "Image to Video").shape == (1, 514, 16)
    with pytest.raises(ValueError, match="clip_vision_output"):
        clip_tokens_from_core(types.SimpleNamespace(), "Image to Video")


class FlowModel:
    """Stands in for core's BaseModel.apply_model on a flow model: denoised = x - sigma * v."""

    def __init__(self):
        self.calls = []

    def velocity(self, x, context):
        return torch.tanh(x) * context.mean()

    def apply_model(self, x, sigma, c_concat=None, c_crossattn=None, transformer_options=None, **extras):
        self.calls.append({"sigma": sigma, "length": c_crossattn.shape[1], "extras": extras})
        return x - sigma.view(-1, 1, 1, 1, 1) * self.velocity(x, c_crossattn)


def test_core_model_is_called_with_sigma_and_gives_back_the_velocity():
    flow = FlowModel()
    patcher = types.SimpleNamespace(model=flow, model_options={"transformer_options": {}})
    x, context = torch.randn(1, 4, 2, 2, 2), torch.randn(1, 7, 8)
    velocity = CoreWanModel(patcher)(x, torch.tensor([250.0]), context)
    torch.testing.assert_close(velocity, flow.velocity(x, context))
    assert float(flow.calls[0]["sigma"]) == pytest.approx(0.25)


def test_sampler_runs_unpadded_cond_and_uncond_apart_at_their_own_lengths():
    flow = FlowModel()
    patcher = types.SimpleNamespace(model=flow, model_options={"transformer_options": {}})
    (cond,) = WanFlowConditioningFromCore().convert(core_text(7), core_text(3, seed=1))
    MoESampler(CoreWanModel(patcher)).sample(torch.randn(1, 4, 2, 2, 2), build_schedule("simple", 2, 5.0, 1.0),
                                             cond, solver="euler", cfg_high=3.0)
    assert [call["length"] for call in flow.calls] == [7, 3, 7, 3]


def test_model_sockets_take_our_handles_or_core_models_only():
    assert not is_core_model(object())
    with pytest.raises(TypeError, match="MoE sampler: model_high: expected a WanFlow model or a core Wan MODEL"):
        as_model_handle("not a model", "MoE sampler", "model_high")
