"""The nano T2V expert pair earns its keep: on held-out clips, the pair *as the MoE sampler runs
it* has a lower flow-matching loss than either expert alone over the whole schedule, and sampling
with both experts scores at least as well as the high-noise expert alone. Teeth: with the experts
exchanged inside the sampler, the pair loses its advantage."""
import numpy as np
import pytest
import torch

from wanflow.model_loaders.detect import NANO_DEFAULTS
from wanflow.model_loaders.dit_loader import load_dit
from wanflow.model_loaders.text_encoder_loader import load_text_encoder
from wanflow.model_loaders.vae_loader import load_vae
from wanflow.nano.files import NANO
from wanflow.nano.vocabulary import held_out_scenes
from wanflow.runner import nano_eval
from wanflow.samplers import moe
from wanflow.samplers.conditioning import WanConditioning
from wanflow.samplers.schedules import official_unipc
from wanflow.train.flow_matching import flow_matching_loss
from wanflow.train.nano_data import clip_set
from wanflow.train.nano_latents import normalised_encoder
from wanflow.wan.umt5 import encode_prompts

from nano_testing import need_nano

pytestmark = pytest.mark.slow
DEFAULTS = NANO_DEFAULTS[("2.2", "t2v", "nano")]
SCHEDULE = official_unipc(DEFAULTS.steps, DEFAULTS.shift)


class Recorder(torch.nn.Module):
    """Stands in for an expert to see which one the sampler calls at each step."""

    def __init__(self, name: str, calls: list) -> None:
        super().__init__()
        self.name, self.calls = name, calls
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, context, **extras):
        self.calls.append(self.name)
        return torch.zeros_like(x)


def experts_the_sampler_uses() -> list[str]:
    """The expert ("high"/"low") ``MoESampler`` runs at each step of the nano schedule."""
    calls: list[str] = []
    cond = WanConditioning(context=torch.zeros(1, 4, 8))
    moe.MoESampler(Recorder("high", calls), Recorder("low", calls)).sample(
        torch.zeros(1, 16, 1, 2, 2), SCHEDULE, cond, cfg_high=1.0, cfg_low=1.0)
    return calls


@pytest.fixture(scope="module")
@torch.no_grad()
def losses_per_step():
    """Flow-matching loss of each expert on held-out clips at every sigma of the schedule."""
    need_nano(NANO.t2v_high, NANO.t2v_low, NANO.vae, NANO.umt5)
    models = {n: load_dit(NANO.path(f)).model.float() for n, f in (("high", NANO.t2v_high), ("low", NANO.t2v_low))}
    text = load_text_encoder(NANO.path(NANO.umt5))
    clips = clip_set(seed=123, per_scene=1, scenes=held_out_scenes())
    x0 = normalised_encoder(load_vae(NANO.path(NANO.vae)).model.float())(clips.pixels(np.arange(len(clips.scenes))))
    context = encode_prompts(text.model, text.tokenizer, [s.caption for s in clips.scenes])
    gen = torch.Generator().manual_seed(0)
    losses = {"high": [], "low": []}
    for sigma in SCHEDULE.sigmas[:-1].tolist():
        noise = torch.randn(x0.shape, generator=gen)
        s = torch.full((x0.shape[0],), sigma)
        for name, model in models.items():
            losses[name].append(flow_matching_loss(model, x0, context, s, noise).item())
    return losses


def mean_losses(losses: dict, used: list[str]) -> dict[str, float]:
    pair = [losses[name][step] for step, name in enumerate(used)]
    return {"pair": float(np.mean(pair)), "high": float(np.mean(losses["high"])),
            "low": float(np.mean(losses["low"]))}


def test_the_pair_beats_either_expert_on_held_out_clips(losses_per_step):
    used = experts_the_sampler_uses()
    assert len(used) == DEFAULTS.steps and used[0] == "high" and used[-1] == "low"
    mean = mean_losses(losses_per_step, used)
    assert mean["pair"] < mean["high"] and mean["pair"] < mean["low"], mean


def test_teeth_exchanged_experts_lose_the_advantage(losses_per_step, monkeypatch):
    """The bug: the sampler runs the low-noise expert on the high-noise steps and vice versa."""
    original = moe.MoESampler.__init__
    monkeypatch.setattr(moe.MoESampler, "__init__",
                        lambda self, high, low=None, **kw: original(self, low, high, **kw))
    mean = mean_losses(losses_per_step, experts_the_sampler_uses())
    assert not (mean["pair"] < mean["high"] and mean["pair"] < mean["low"]), mean


def test_sampling_with_both_experts_scores_at_least_the_high_expert_alone():
    need_nano(NANO.t2v_high, NANO.t2v_low)
    scenes = nano_eval.EVAL_SCENES[:8]
    pair = nano_eval.summary(nano_eval.score_t2v(scenes))
    high_only = nano_eval.summary(nano_eval.score_t2v(scenes, extra=["8.boundary=0.005"]))  # high on every step
    assert pair["colour"] + pair["direction"] >= high_only["colour"] + high_only["direction"], (pair, high_only)
