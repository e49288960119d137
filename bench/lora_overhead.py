"""Run-time (unmerged) LoRA overhead per DiT forward, against merged and against no LoRA.

Measures our WanDiT with a LoRA stack applied unmerged (adapters on ``ops.Linear``) and merged,
and, side by side in the same process on the same weights, diffusers' ``WanTransformer3DModel``
with the same LoRA loaded through its PEFT backend (``load_lora_adapter``; merged with
``fuse_lora``). Variants are timed round-robin so machine load hits all of them alike; the
median of the rounds is reported. Also checks that all LoRA variants give the same output.

    python bench/lora_overhead.py --out bench/results/lora_overhead.md

diffusers needs ``peft`` for its LoRA path; without it the peer rows are skipped and the report
says so.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import time
from typing import Callable

import torch

from wanflow.model_loaders import dit_keys
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import WanDiTConfig
from wanflow.wan.lora import LoraStack
from bench_info import commit, cpu_model

LINEAR_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                  "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=1536, help="DiT width (1536 = Wan 2.1 1.3B)")
    p.add_argument("--ffn-dim", type=int, default=8960)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--layers", type=int, default=2, help="blocks (1.3B has 30; time scales linearly)")
    p.add_argument("--frames", type=int, default=4, help="latent frames")
    p.add_argument("--size", type=int, default=24, help="latent height = width")
    p.add_argument("--prompt-tokens", type=int, default=64,
                   help="real prompt tokens; the context is zero-padded to 512 like the text encoder's")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--loras", type=int, default=1, help="how many LoRAs are stacked (all active)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--clock", default=None, choices=["wall", "cpu"],
                   help="cpu = this process's CPU time (robust on a shared CPU; default on CPU), "
                        "wall = elapsed time (default on GPU)")
    p.add_argument("--out", default=None, help="write a markdown report here")
    return p.parse_args()


def randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2 and name.endswith("weight"):
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_((1.0 if "norm" in name else 0.0) + 0.1 * noise)


def make_lora(cfg: WanDiTConfig, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """A diffusers-named LoRA (alpha folded in) on every attention and FFN Linear."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"ffn.0": (cfg.ffn_dim, cfg.dim), "ffn.2": (cfg.dim, cfg.ffn_dim)}
    official = {}
    for i in range(cfg.num_layers):
        for target in LINEAR_TARGETS:
            out_f, in_f = shapes.get(target, (cfg.dim, cfg.dim))
            official[f"blocks.{i}.{target}.weight"] = (
                torch.randn(rank, in_f, generator=gen) / in_f ** 0.5,
                torch.randn(out_f, rank, generator=gen) * 0.1 / rank ** 0.5)
    sd = {}
    for key, (down, up) in dit_keys.official_to_diffusers(official).items():
        module = key[: -len(".weight")]
        sd[f"transformer.{module}.lora_A.weight"] = down
        sd[f"transformer.{module}.lora_B.weight"] = up
    return sd


def timed_rounds(variants: dict[str, Callable[[], object]], rounds: int,
                 sync: Callable[[], None], clock: Callable[[], float]) -> dict[str, list[float]]:
    """Seconds per call of each variant, timed round-robin after one warm-up each."""
    for fn in variants.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            sync()
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return times


# CPU time counts only this process's work, so other jobs on a shared machine do not inflate it
# (they still compete for caches and memory bandwidth).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at start"



def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    args.clock = args.clock or ("wall" if device.type == "cuda" else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg = WanDiTConfig(dim=args.dim, ffn_dim=args.ffn_dim, num_heads=args.heads, num_layers=args.layers)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.in_dim, args.frames, args.size, args.size, generator=gen).to(device, dtype)
    t = torch.tensor([700.0], device=device)
    context = torch.zeros(1, cfg.text_len, cfg.text_dim)
    context[:, : args.prompt_tokens] = torch.randn(1, args.prompt_tokens, cfg.text_dim, generator=gen)
    context = context.to(device, dtype)
    loras = [{k: v.to(dtype) for k, v in make_lora(cfg, args.rank, 2 + i).items()} for i in range(args.loras)]

    # One model copy per variant, so all variants are timed round-robin in the same loop.
    base = WanDiT(cfg).eval()
    randomize(base, 0)
    base.to(device, dtype)
    stack = LoraStack()
    for i, lora in enumerate(loras):
        stack.add(f"bench{i}", high=lora, low=None)
    models = {"ours, no LoRA": base}
    for mode in ("unmerged", "merged"):
        model = copy.deepcopy(base)
        stack.apply(model, "high", mode=mode)
        models[f"ours, {mode} LoRA"] = model
    peer_note = add_peer(cfg, base, loras, models)

    def forward(model: torch.nn.Module) -> Callable[[], torch.Tensor]:
        if isinstance(model, WanDiT):
            return lambda: model(x, t, context)
        return lambda: model(hidden_states=x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]

    with torch.no_grad():
        calls = {name: forward(model) for name, model in models.items()}
        outputs = {name: call().float() for name, call in calls.items()}
        results = timed_rounds(calls, args.rounds, sync, CLOCKS[args.clock])
    report = format_report(args, cfg, results, outputs, peer_note)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


def add_peer(cfg: WanDiTConfig, base: WanDiT, loras: list[dict[str, torch.Tensor]],
             models: dict[str, torch.nn.Module]) -> str:
    """diffusers WanTransformer3DModel copies of ``base``: no LoRA, PEFT LoRA, fused PEFT LoRA."""
    try:
        import diffusers
        import peft
    except ImportError as err:
        return f"diffusers/PEFT peer skipped ({err}); install peft to compare"
    weights = dit_keys.official_to_diffusers(base.state_dict())
    param = next(base.parameters())
    for label in ("no LoRA", "PEFT unmerged LoRA", "PEFT fused LoRA"):
        ref = diffusers.WanTransformer3DModel(**dit_keys.diffusers_config(cfg)).eval()
        ref.load_state_dict(weights, strict=True)
        ref.to(param.device, param.dtype)
        names = [f"bench{i}" for i in range(len(loras))]
        if label != "no LoRA":
            for name, lora in zip(names, loras):
                ref.load_lora_adapter(dict(lora), prefix="transformer", adapter_name=name)
            ref.set_adapters(names, weights=[1.0] * len(names))
        if label == "PEFT fused LoRA":
            ref.fuse_lora(lora_scale=1.0, adapter_names=names)
        models[f"diffusers, {label}"] = ref
    return (f"diffusers {diffusers.__version__} `WanTransformer3DModel` + peft {peft.__version__} "
            "(`load_lora_adapter` per LoRA, all active; fused with `fuse_lora`), same weights and LoRAs")


def lora_flop_share(cfg: WanDiTConfig, args: argparse.Namespace) -> float:
    """Adapter FLOPs / base FLOPs of the patched Linear layers (cross k/v see the text tokens)."""
    video, text, r = args.frames * (args.size // 2) ** 2, cfg.text_len, args.rank * args.loras
    layers = [(video, cfg.dim, cfg.dim)] * 6 + [(text, cfg.dim, cfg.dim)] * 2 + [
        (video, cfg.dim, cfg.ffn_dim), (video, cfg.ffn_dim, cfg.dim)]
    base = sum(tokens * i * o for tokens, i, o in layers)
    extra = sum(tokens * r * (i + o) for tokens, i, o in layers)
    return extra / base


def format_report(args, cfg, results, outputs, peer_note) -> str:
    tokens = args.frames * (args.size // 2) ** 2
    lines = [
        "# LoRA overhead per DiT forward: unmerged (run-time adapters) vs merged",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit `{commit()}`",
        f"- Machine: {machine_description(args.device)}; torch {torch.__version__}, "
        f"{args.threads} threads, device {args.device}, {args.dtype}",
        f"- Model: WanDiT dim {cfg.dim}, ffn {cfg.ffn_dim}, {cfg.num_heads} heads, {cfg.num_layers} blocks; "
        f"{tokens} video tokens, {cfg.text_len} text tokens ({args.prompt_tokens} non-zero)",
        f"- LoRA: {args.loras} stacked, each rank {args.rank} on every self/cross-attention q,k,v,o "
        f"and ffn.0/ffn.2 ({10 * cfg.num_layers} Linear layers)",
        f"- Peer: {peer_note}",
        f"- {args.rounds} timed forwards per variant ({args.clock} clock) after one warm-up, variants "
        "interleaved round-robin (one model copy each); command: "
        f"`python bench/lora_overhead.py --dim {args.dim} --ffn-dim {args.ffn_dim} --heads {args.heads} "
        f"--layers {args.layers} --frames {args.frames} --size {args.size} "
        f"--rank {args.rank} --loras {args.loras} --rounds {args.rounds} --threads {args.threads} --clock {args.clock}`",
        "",
        f"- Extra FLOPs of the adapters: {lora_flop_share(cfg, args) * 100:.1f}% of the "
        "patched Linear layers' own FLOPs (what the unmerged mode costs ideally; merged costs nothing per step)",
        "",
        "| variant | median ms | min ms | vs merged, min/min | vs merged, median of per-round ratios |",
        "|---|---:|---:|---:|---:|",
    ]
    for stack in ("ours", "diffusers"):
        merged_name = f"{stack}, merged LoRA" if stack == "ours" else f"{stack}, PEFT fused LoRA"
        if merged_name not in results:
            continue
        merged = results[merged_name]
        for name, times in results.items():
            if not name.startswith(stack):
                continue
            ratios = [a / b for a, b in zip(times, merged)]
            lines.append(
                f"| {name} | {statistics.median(times) * 1000:.1f} | {min(times) * 1000:.1f} "
                f"| {(min(times) / min(merged) - 1) * 100:+.1f}% "
                f"| {(statistics.median(ratios) - 1) * 100:+.1f}% |")
    ref = outputs["ours, unmerged LoRA"]
    lines += ["", "Output agreement, max abs difference (output scale "
              f"{ref.abs().max():.3g}; the LoRA itself moves the output by "
              f"{(ref - outputs['ours, no LoRA']).abs().max():.3g}):", ""]
    pairs = [("ours, merged LoRA", "ours, unmerged LoRA"),
             ("diffusers, no LoRA", "ours, no LoRA"),
             ("diffusers, PEFT unmerged LoRA", "ours, unmerged LoRA"),
             ("diffusers, PEFT fused LoRA", "ours, unmerged LoRA")]
    for a, b in pairs:
        if a in outputs and b in outputs:
            lines.append(f"- {a} vs {b}: {(outputs[a] - outputs[b]).abs().max():.3g}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
