"""The step cache's speed-up where it can be judged: the trained nano T2V pair, 40 steps with CFG.

A cache skips forwards when the model's input has changed little; on random 14B weights that
decision would mean nothing, so it is taken on the shipped nano experts (real prompts through the
nano umT5) and the fraction of forwards it runs is carried over to the 14B step time.
"""
from __future__ import annotations

import time

import torch

from wanflow.model_loaders.dit_loader import load_dit
from wanflow.model_loaders.text_encoder_loader import load_text_encoder
from wanflow.nano.files import NANO
from wanflow.samplers.conditioning import WanConditioning
from wanflow.samplers.moe import MoESampler
from wanflow.samplers.noise import seeded_noise
from wanflow.samplers.schedules import build_schedule
from wanflow.wan.umt5 import encode_prompts

PROMPT = "a red circle moving slowly left on a white background"


def nano_cache_speedups(device: torch.device, levels: list[str], where: str,
                        steps: int) -> dict[str, tuple[float, int, int]]:
    """Per level: (wall-time speed-up, forwards run with the cache, forwards without) at ``steps``
    steps. ``where``: "sample" or "__init__", the MoESampler method that takes ``cache``."""
    text = load_text_encoder(NANO.path(NANO.umt5))
    cond = WanConditioning(context=encode_prompts(text.model, text.tokenizer, [PROMPT]),
                           negative_context=encode_prompts(text.model, text.tokenizer, [""]))
    high, low = (load_dit(NANO.path(name)).model.to(device) for name in (NANO.t2v_high, NANO.t2v_low))
    forwards = [0]
    for model in (high, low):
        model.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    noise = seeded_noise((1, 16, 5, 8, 8), 0)
    schedule = build_schedule("unipc", steps, 3.0)

    def sample(cache: str) -> tuple[float, int]:
        option = {"cache": cache}
        sampler = MoESampler(high, low, device=device, **(option if where == "__init__" else {}))
        forwards[0] = 0
        sync()
        start = time.perf_counter()
        sampler.sample(noise, schedule, cond, cfg_high=4.0, cfg_low=3.0, **(option if where == "sample" else {}))
        sync()
        return time.perf_counter() - start, forwards[0]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sample("off")  # warm-up
    exact_s, exact_n = sample("off")
    speedups = {}
    for level in levels:
        cached_s, cached_n = sample(level)
        speedups[level] = (exact_s / cached_s, cached_n, exact_n)
    return speedups
