"""Step cache (samplers/step_cache.py): protected steps, exactness at threshold 0, per-expert
thresholds, a nano run that skips and stays close, and the errors of the node and the runner."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wanflow.model_loaders.detect import NANO_DEFAULTS
from wanflow.model_loaders.dit_loader import load_dit
from wanflow.model_loaders.text_encoder_loader import load_text_encoder
from wanflow.model_loaders.vae_loader import load_vae
from wanflow.nano.files import NANO
from wanflow.nodes import comfy_adapter as ca
from wanflow.nodes.sampler_nodes import WanFlowMoESampler
from wanflow.runner import cli, errors, execute, workflow
from wanflow.runner.registry import node_classes
from wanflow.samplers import step_cache
from wanflow.samplers.conditioning import WanConditioning
from wanflow.samplers.moe import MoESampler
from wanflow.samplers.noise import seeded_noise
from wanflow.samplers.schedules import official_unipc
from wanflow.samplers.step_cache import CacheLevel, StepCache
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import TINY_PRESETS
from wanflow.wan.latent_stats import WAN21
from wanflow.wan.umt5 import encode_prompts

from nano_testing import need_nano
from moe_testing import single_thread  # noqa: F401  (autouse: one thread for tiny tensors)

ROOT = Path(__file__).resolve().parents[1]
EVERYTHING = 1e9          # a threshold no accumulated change reaches: every unprotected step is skipped


class Counted(torch.nn.Module):
    """A tiny random WanDiT whose forwards are counted (a forward pre-hook, the model untouched)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.dit = WanDiT(TINY_PRESETS["t2v"]).eval()
        self.calls = 0
        self.dit.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def forward(self, *args, **kwargs):
        return self.dit(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny_pair():
    return Counted(1), Counted(2)


def tiny_conditioning() -> WanConditioning:
    g = torch.Generator().manual_seed(5)
    return WanConditioning(context=torch.randn(1, 8, 32, generator=g),
                           negative_context=torch.randn(1, 8, 32, generator=g) * 0.1)


def sample_tiny(pair, steps=12, switch=6, cache=None, batched=True):
    high, low = pair
    high.calls = low.calls = 0
    schedule = official_unipc(steps, 5.0)
    noise = seeded_noise((1, 16, 2, 4, 4), 3)
    return MoESampler(high, low, batched_cfg=batched).sample(noise, schedule, tiny_conditioning(), cfg_high=4.0,
                                                             cfg_low=3.0, switch_step=switch, cache=cache)


# --------------------------------------------------------------------------- protected steps

def test_protected_steps_are_the_first_of_each_expert_and_the_last():
    cache = StepCache(CacheLevel(1.0, 1.0, warmup=3, tail=2), steps=14, switch=6)
    assert [s for s in range(14) if cache.protected(s)] == [0, 1, 2, 6, 7, 8, 12, 13]
    single = StepCache(CacheLevel(1.0, 1.0, warmup=2, tail=1), steps=10, switch=10)
    assert [s for s in range(10) if single.protected(s)] == [0, 1, 9]


@pytest.mark.parametrize("batched", [True, False])
def test_the_cache_never_skips_protected_steps_and_skips_the_rest(tiny_pair, batched):
    """With thresholds no change reaches, exactly the unprotected steps are skipped: the first three
    of each expert (calibration) and the last two always run, whatever the cache predicts."""
    level = CacheLevel(EVERYTHING, EVERYTHING, warmup=3, tail=2)
    result = sample_tiny(tiny_pair, steps=14, switch=6, cache=level, batched=batched)
    assert result.cache.skipped_steps == [3, 4, 5, 9, 10, 11]
    passes = 1 if batched else 2                         # cond and uncond run, or skip, together
    assert result.cache.skipped == {"high": 3 * passes, "low": 3 * passes}
    assert result.cache.computed == {"high": 3 * passes, "low": 5 * passes}
    high, low = tiny_pair
    assert (high.calls, low.calls) == (3 * passes, 5 * passes)          # the models' own count agrees
    assert torch.isfinite(result.latent).all()


def test_threshold_zero_is_the_exact_run_bit_for_bit(tiny_pair):
    for batched in (True, False):
        exact = sample_tiny(tiny_pair, batched=batched)
        zero = sample_tiny(tiny_pair, cache=CacheLevel(0.0, 0.0), batched=batched)
        assert torch.equal(zero.latent, exact.latent)
        assert zero.cache.skipped == {} and sum(zero.cache.computed.values()) == 12 * (1 if batched else 2)
    assert exact.cache is None


def test_each_expert_has_its_own_threshold(tiny_pair):
    only_low = sample_tiny(tiny_pair, steps=14, switch=6, cache=CacheLevel(0.0, EVERYTHING, warmup=2, tail=1))
    assert only_low.cache.skipped_steps == [8, 9, 10, 11, 12] and "high" not in only_low.cache.skipped
    only_high = sample_tiny(tiny_pair, steps=14, switch=6, cache=CacheLevel(EVERYTHING, 0.0, warmup=2, tail=1))
    assert only_high.cache.skipped_steps == [2, 3, 4, 5] and "low" not in only_high.cache.skipped
    exact = sample_tiny(tiny_pair, steps=14, switch=6)
    assert not torch.equal(only_low.latent, exact.latent)     # teeth: a skipped step changes the result


# --------------------------------------------------------------------------- a real (nano) model

@pytest.fixture(scope="module")
def nano_t2v():
    need_nano(NANO.t2v_high, NANO.t2v_low, NANO.umt5, NANO.vae)
    high, low = (load_dit(NANO.path(name)).model.float() for name in (NANO.t2v_high, NANO.t2v_low))
    text = load_text_encoder(NANO.path(NANO.umt5))
    context = encode_prompts(text.model, text.tokenizer, ["a red circle moving left on a white background", ""])
    return high, low, WanConditioning(context=context[:1], negative_context=context[1:]), load_vae(NANO.path(NANO.vae)).model


def decoded(vae, latent: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (vae.decode(WAN21.denormalize(latent)) + 1) / 2


def test_a_cached_nano_run_skips_forwards_and_stays_close_to_the_exact_video(nano_t2v):
    high, low, cond, vae = nano_t2v
    defaults = NANO_DEFAULTS[("2.2", "t2v", "nano")]
    schedule = official_unipc(30, defaults.shift)
    noise = seeded_noise((1, 16, 5, 8, 8), 0)
    sampler = MoESampler(high, low)
    runs = {level: sampler.sample(noise, schedule, cond, cfg_high=defaults.guide_scale,
                                  cfg_low=defaults.guide_scale_low_noise, boundary=defaults.boundary, cache=level)
            for level in ("off", "balanced")}
    stats = runs["balanced"].cache
    assert sum(stats.skipped.values()) >= 8 and stats.skipped.get("low", 0) > 0
    exact, cached = decoded(vae, runs["off"].latent), decoded(vae, runs["balanced"].latent)
    psnr = 10 * np.log10(1.0 / float(((exact - cached) ** 2).mean()))
    assert 30.0 <= psnr < 100.0, psnr                   # close, and not the exact run itself


# --------------------------------------------------------------------------- choices and errors

def test_levels_and_choices():
    assert step_cache.CACHE_CHOICES == ("off", "quality", "balanced", "fast")
    assert step_cache.cache_level("off") is None and step_cache.cache_level(None) is None
    levels = [step_cache.cache_level(name) for name in ("quality", "balanced", "fast")]
    assert [lv.high for lv in levels] == sorted(lv.high for lv in levels)        # most faithful first
    assert all(lv.high <= lv.low for lv in levels)    # the high-noise expert sets the layout: stricter
    assert WanFlowMoESampler.INPUT_TYPES()["optional"]["cache"][0] == list(step_cache.CACHE_CHOICES)
    assert WanFlowMoESampler.INPUT_TYPES()["optional"]["cache"][1]["default"] == "off"


@pytest.mark.parametrize("bad", ["turbo", "", 2, "Balanced"])
def test_a_bad_cache_value_is_refused_naming_the_choices(bad):
    with pytest.raises(ValueError, match="not a step-cache level; expected one of off, quality, balanced, fast"):
        step_cache.cache_level(bad)


@pytest.mark.parametrize("kwargs, message", [(dict(high=-0.1, low=0.1), "threshold high must be >= 0"),
                                             (dict(high=0.1, low=float("nan")), "threshold low must be >= 0"),
                                             (dict(high=0.1, low=0.1, warmup=0), "warmup and tail must be >= 1")])
def test_bad_custom_levels_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CacheLevel(**kwargs)


def test_the_sampler_refuses_a_bad_cache_before_any_step(tiny_pair):
    with pytest.raises(ValueError, match="cache: 'turbo' is not a step-cache level"):
        sample_tiny(tiny_pair, cache="turbo")
    assert tiny_pair[0].calls == 0


def test_the_node_refuses_a_bad_cache_naming_itself():
    with pytest.raises(ValueError, match="MoE sampler: cache: 'turbo' is not a step-cache level"):
        WanFlowMoESampler().sample(None, None, None, 0, 4, 5.0, "unipc", "unipc", 4.0, 3.0, 0.0, 1.0, cache="turbo")


def test_a_saved_workflow_with_a_bad_cache_value_is_invalid_before_running():
    path = ROOT / "workflows" / "wanflow_nano_t2v.json"
    classes = node_classes()
    flow = workflow.load_workflow(json.loads(path.read_text()), classes, path.name)
    sampler = next(n for n, e in flow.prompt.items() if e["class_type"] == "WanFlowMoESampler")
    flow.prompt[sampler]["inputs"]["cache"] = "turbo"
    with pytest.raises(errors.InvalidWorkflow, match="cache"):
        execute.validate(flow.prompt, classes)


def test_wanflow_run_cache_sets_every_sampler_and_refuses_bad_levels(tmp_path, capsys):
    path = ROOT / "workflows" / "wanflow_nano_t2v.json"
    prompt = workflow.load_workflow(json.loads(path.read_text()), node_classes(), path.name).prompt
    assert cli.set_cache(prompt, "fast") == 1
    assert [e["inputs"]["cache"] for e in prompt.values() if e["class_type"] == "WanFlowMoESampler"] == ["fast"]
    code = cli.main(["run", str(path), "--output", str(tmp_path / "out"), "--quiet", "--cache", "turbo"])
    assert code == errors.EXIT_USAGE
    assert "--cache: 'turbo' is not a step-cache level" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_wanflow_run_cache_reaches_the_sampler(tmp_path):
    need_nano(NANO.t2v_high, NANO.t2v_low, NANO.umt5, NANO.vae)
    try:
        result = cli.run_workflow(ROOT / "workflows" / "wanflow_nano_t2v.json", None, tmp_path / "in",
                                  tmp_path / "out", ["8.steps=16", "10.format=png"], "cpu", cache="fast")
    finally:
        ca.configure_headless(None, None, None)
    assert "step cache skipped" in " ".join(result.ui["8"]["text"])
