"""MoE sampler and LoRA select nodes on tiny random DiTs: raw LATENT in/out, experts, LoRAs, errors."""
import pytest
import torch
from safetensors.torch import save_file

from wanflow.model_loaders.detect import WanVariant, official_defaults
from wanflow.nodes import comfy_adapter as ca
from wanflow.nodes.handles import ModelHandle
from wanflow.nodes.lora_nodes import LoraChoice, WanFlowLoraSelect
from wanflow.nodes.sampler_nodes import WanFlowMoESampler
from wanflow.samplers.conditioning import WanConditioning
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import TINY_PRESETS
from wanflow.wan.latent_stats import WAN21


def tiny_handle(task="t2v", expert=None, seed=0):
    torch.manual_seed(seed)
    config = TINY_PRESETS[task]
    model = WanDiT(config).eval()
    variant = WanVariant("2.2", "t2v", "tiny", expert, config, official_defaults("2.2", "t2v", "14B"))
    return ModelHandle(model, variant)


@pytest.fixture(scope="module")
def experts():
    return tiny_handle(expert="high", seed=1), tiny_handle(expert="low", seed=2)


def conditioning(text_dim=32):
    torch.manual_seed(5)
    return WanConditioning(context=torch.randn(1, 8, text_dim), negative_context=torch.zeros(1, 8, text_dim))


def run(high, low=None, latent=None, lora_stack=None, **overrides):
    args = dict(seed=7, steps=4, shift=12.0, solver="unipc", scheduler="unipc", cfg_high=4.0, cfg_low=3.0,
                boundary=0.0, denoise=1.0)
    args.update(overrides)
    latent = latent if latent is not None else {"samples": torch.zeros(1, 16, 2, 4, 4)}
    (out,) = WanFlowMoESampler().sample(high, conditioning(), latent, model_low=low, lora_stack=lora_stack, **args)["result"]
    return out["samples"]


def test_two_experts_give_raw_latent_and_are_deterministic(experts):
    high, low = experts
    ca.set_headless_progress(False)
    first = run(high, low)
    assert first.shape == (1, 16, 2, 4, 4) and torch.isfinite(first).all()
    torch.testing.assert_close(run(high, low), first)
    # Output is raw VAE space: re-normalising gives the sampler's space, not the raw values.
    assert not torch.allclose(WAN21.normalize(first), first)
    assert not torch.allclose(run(high, low, seed=8), first)
    assert not torch.allclose(run(high, None), first)  # the low expert is used after the switch


def test_batch_repeats_single_prompt(experts):
    out = run(experts[0], latent={"samples": torch.zeros(2, 16, 1, 4, 4)})
    assert out.shape == (2, 16, 1, 4, 4)


def test_swapped_experts_are_refused(experts):
    high, low = experts
    with pytest.raises(ValueError, match="connect the high-noise expert to model_high"):
        run(low, high)
    assert run(low).shape == (1, 16, 2, 4, 4)  # a low-noise expert alone is a valid single model


def test_an_image_to_video_expert_refuses_text_only_conditioning():
    """Issue 15: a clear error naming the socket, not a channel-count error inside the model."""
    i2v = tiny_handle("i2v", expert="high")
    i2v.variant = WanVariant("2.2", "i2v", "tiny", "high", TINY_PRESETS["i2v"], official_defaults("2.2", "i2v", "14B"))
    with pytest.raises(ValueError, match="model_high is .*an image-to-video model, but its conditioning is text"):
        run(i2v)


def test_wrong_latent_channels(experts):
    with pytest.raises(ValueError, match="the latent has 48 channels but .* works on 16"):
        run(experts[0], latent={"samples": torch.zeros(1, 48, 1, 4, 4)})


def test_interrupt_stops_sampling(experts):
    ca.configure_headless(None, None, None)
    ca.request_interrupt()
    with pytest.raises(ca.Interrupted):
        run(experts[0])


def test_lora_select_chains_and_sampler_applies_then_removes(experts, tmp_path):
    high, low = experts
    lora_dir = tmp_path / "models" / "loras"
    lora_dir.mkdir(parents=True)
    torch.manual_seed(3)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(2, 48) * 0.5,
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(48, 2) * 0.5},
              str(lora_dir / "style_high.safetensors"))
    ca.configure_headless(tmp_path / "models", tmp_path / "in", tmp_path / "out")
    (stack,) = WanFlowLoraSelect().select("style_high.safetensors", 1.0, "none", 1.0)
    (stack,) = WanFlowLoraSelect().select("none", 1.0, "none", 1.0, lora_stack=stack)
    assert stack == (LoraChoice("style_high.safetensors", None, 1.0, 1.0),)
    assert WanFlowLoraSelect.VALIDATE_INPUTS("style_high.safetensors", "none") is True
    with pytest.raises(ca.MissingFile):
        WanFlowLoraSelect.VALIDATE_INPUTS("none", "nope.safetensors")
    with pytest.raises(ca.UnsafeFileName):
        WanFlowLoraSelect.VALIDATE_INPUTS("../x.safetensors", "none")
    before = {k: v.clone() for k, v in high.model.state_dict().items()}
    plain = run(high, low)
    with_lora = run(high, low, lora_stack=stack)
    assert not torch.allclose(with_lora, plain)
    torch.testing.assert_close(run(high, low), plain)  # removed after the run
    for key, value in high.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    ca.configure_headless(None, None, None)


def test_denoise_below_one_starts_from_the_input_latent(experts):
    high, _ = experts
    torch.manual_seed(9)
    source = {"samples": torch.randn(1, 16, 2, 4, 4)}
    light = run(high, latent=source, denoise=0.2, steps=2)
    full = run(high, latent=source, denoise=1.0, steps=2)
    # A light denoise stays close to the input; a full one ignores it.
    assert (light - source["samples"]).abs().mean() < (full - source["samples"]).abs().mean()
    empty = run(high, latent={"samples": torch.zeros(1, 16, 2, 4, 4)}, denoise=0.5, steps=2)
    assert torch.isfinite(empty).all()


def test_boundary_zero_is_the_variants_official_switch(experts):
    """boundary 0 = the variant's default (T2V 0.875, I2V 0.900); a set value overrides it.

    Shift 12, 8 steps: timesteps 999 988 972 952 922 877 | 799 631, so the three rules give
    6, 5 and 4 high-noise steps.
    """
    import dataclasses

    high, low = experts
    i2v_high = dataclasses.replace(high, variant=dataclasses.replace(
        high.variant, task="i2v", defaults=official_defaults("2.2", "i2v", "14B")))
    calls = {"high": 0, "low": 0}
    hooks = [m.model.register_forward_hook(lambda *a, name=name: calls.__setitem__(name, calls[name] + 1))
             for name, m in (("high", high), ("low", low))]
    try:
        for model, boundary, high_steps in ((high, 0.0, 6), (i2v_high, 0.0, 5), (high, 0.95, 4)):
            calls.update(high=0, low=0)
            run(model, low, steps=8, boundary=boundary)
            assert calls == {"high": high_steps, "low": 8 - high_steps}, (model.variant.task, boundary, calls)
    finally:
        for hook in hooks:
            hook.remove()


def test_lora_pair_keeps_each_files_own_alpha(tmp_path):
    """A high/low pair of PEFT folders with different lora_alpha: each file is scaled by its own."""
    import json

    from wanflow.nodes.lora_nodes import build_lora_stack

    lora_dir = tmp_path / "models" / "loras"
    for expert, alpha in (("high", 4.0), ("low", 16.0)):
        folder = lora_dir / expert
        folder.mkdir(parents=True)
        save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.ones(2, 48),
                   "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.ones(48, 2)},
                  str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps({"lora_alpha": alpha, "r": 2}))
    ca.configure_headless(tmp_path / "models", tmp_path / "in", tmp_path / "out")
    try:
        pair = LoraChoice("high/adapter_model.safetensors", "low/adapter_model.safetensors", 0.7, 0.9)
        stack = build_lora_stack((pair,))
        by_expert = {("high" if e.high is not None else "low"): e for e in stack.loras}
        assert by_expert["high"].default_alpha == 4.0 and by_expert["high"].low is None
        assert by_expert["low"].default_alpha == 16.0 and by_expert["low"].high is None
        assert (by_expert["high"].strength_high, by_expert["low"].strength_low) == (0.7, 0.9)
        same = build_lora_stack((LoraChoice("high/adapter_model.safetensors",
                                            "high/adapter_model.safetensors", 1.0, 0.5),))
        assert len(same.loras) == 1 and same.loras[0].high is same.loras[0].low
    finally:
        ca.configure_headless(None, None, None)


def test_the_node_shows_the_boundary_and_the_step_split(experts):
    """Issue 11: the split is on the node after a run, not only in the log."""
    high, low = experts
    result = WanFlowMoESampler().sample(high, conditioning(), {"samples": torch.zeros(1, 16, 2, 4, 4)}, seed=7,
                                        steps=4, shift=12.0, solver="unipc", scheduler="unipc", cfg_high=4.0,
                                        cfg_low=3.0, boundary=0.0, denoise=1.0, model_low=low)
    (note,) = result["ui"]["text"]
    assert note.startswith("boundary 0.875 (automatic): high-noise expert ") and note.endswith(" steps")
    split = [int(word) for word in note.replace(",", " ").split() if word.isdigit()]
    assert sum(split) == 4 and min(split) >= 1
    single = WanFlowMoESampler().sample(high, conditioning(), {"samples": torch.zeros(1, 16, 2, 4, 4)}, seed=7,
                                        steps=3, shift=12.0, solver="unipc", scheduler="unipc", cfg_high=4.0,
                                        cfg_low=3.0, boundary=0.0, denoise=1.0)
    assert single["ui"]["text"] == ["one model, 3 steps"]


def test_each_expert_samples_with_its_own_loaders_attention_backend(experts, monkeypatch):
    import dataclasses

    from wanflow.wan import attention as A

    calls = []
    for name in ("high-kernel", "low-kernel"):
        fn = (lambda tag: lambda q, k, v, k_lens=None: calls.append(tag) or A.sdpa_attention(q, k, v, k_lens))(name)
        monkeypatch.setitem(A._BACKENDS, name, A.Backend(name, fn))
    high = dataclasses.replace(experts[0], attention="high-kernel")
    low = dataclasses.replace(experts[1], attention="low-kernel")
    out = run(high, low, steps=4, boundary=0.9)
    torch.testing.assert_close(out, run(*experts, steps=4, boundary=0.9))  # same maths, other kernels
    switch = calls.index("low-kernel")
    assert switch > 0 and set(calls[:switch]) == {"high-kernel"} and set(calls[switch:]) == {"low-kernel"}
    assert A.get_backend() == "sdpa"


def test_headless_experts_larger_than_the_budget_stream_their_blocks(experts, monkeypatch):
    """When block_swap_for picks block swap (here forced with a budget of one block, on the CPU),
    the sampler places both experts through it and the video is the same as without."""
    from wanflow.nodes import sampler_nodes
    from wanflow.wan.block_swap import BlockSwap

    high, low = experts
    ca.set_headless_progress(False)
    plain = run(high, low)
    made = []

    def tiny_budget(module, inner=None):
        block = ca.module_bytes(module.blocks[0])
        other = ca.module_bytes(module) - sum(ca.module_bytes(b) for b in module.blocks)
        swap = BlockSwap(module, other + 2 * block, inner=inner)   # no block can stay resident
        assert swap.plan_for(other + 2 * block).resident == ()
        made.append(swap)
        return swap

    monkeypatch.setattr(sampler_nodes, "block_swap_for", tiny_budget)
    torch.testing.assert_close(run(high, low), plain)
    assert len(made) == 2 and all(not swap.hooked for swap in made)
