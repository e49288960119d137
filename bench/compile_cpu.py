"""DiT forward on the CPU: our eager blocks, our compiled blocks and diffusers, side by side.

Cases: the shipped WanNano T2V high-noise expert (dim 128, 4 blocks, its real 64x64x17 input) and
a slice of Wan 2.1 1.3B width (dim 1536, 12 heads, ffn 8960, 2 blocks, random weights). Each runs
in fp32 and bf16 (weights converted to the compute dtype). Variants on the same weights:

- ours, eager: ``WanDiT`` as it ships;
- ours, compiled: ``wan.compiled_blocks.compile_blocks`` (inductor, dynamic shapes off);
- diffusers, eager: ``WanTransformer3DModel`` loaded with the same weights (``dit_keys``);
- diffusers, compiled: its own regional compile (``compile_repeated_blocks``), when it has one;
- in bf16 also ours, compiled, with the time-embedding MLP stored in fp32: it computes in fp32 (as
  the official code does), so bf16-stored weights are cast on every forward.

Variants are timed round-robin (this process's CPU time on one thread by default: the machine is
shared) after a first call that compiles; the compile time is that first call's wall time.

    python bench/compile_cpu.py --out bench/results/compile_cpu.md
"""
from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import time
from typing import Callable

import torch
import torch._dynamo

from lora_overhead import CLOCKS, git_commit, machine_description, randomize, timed_rounds
from wanflow.model_loaders import dit_keys
from wanflow.model_loaders.dit_loader import load_dit
from wanflow.nano.files import NANO
from wanflow.wan.compiled_blocks import compile_blocks
from wanflow.wan.dit import WanDiT
from wanflow.wan.dit_config import WanDiTConfig

SLICE = WanDiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=2)
EAGER, COMPILED, PEER, PEER_COMPILED = ("ours, eager", "ours, compiled", "diffusers, eager",
                                        "diffusers, compiled")
FP32_TIME = "ours, compiled, fp32 time MLP"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["nano", "slice"], choices=["nano", "slice"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--frames", type=int, default=4, help="slice: latent frames")
    p.add_argument("--size", type=int, default=24, help="slice: latent height = width")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--bf16-rounds", type=int, default=3, help="rounds for bf16 (about 6x slower here)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", default="cpu", choices=sorted(CLOCKS))
    p.add_argument("--no-peer-compile", action="store_true", help="skip diffusers' compiled variant")
    p.add_argument("--out", default=None)
    return p.parse_args()


def nano_case() -> tuple[WanDiT, dict[str, torch.Tensor]]:
    """The shipped nano expert and one input at its native 64x64, 17 frames (5 latent frames)."""
    model = load_dit(NANO.path(NANO.t2v_high)).model.float().eval()
    gen = torch.Generator().manual_seed(1)
    context = torch.zeros(1, model.config.text_len, model.config.text_dim)
    context[:, :12] = torch.randn(1, 12, model.config.text_dim, generator=gen)
    return model, dict(x=torch.randn(1, 16, 5, 8, 8, generator=gen), context=context)


def slice_case(frames: int, size: int) -> tuple[WanDiT, dict[str, torch.Tensor]]:
    model = WanDiT(SLICE).eval()
    randomize(model, 0)
    gen = torch.Generator().manual_seed(1)
    context = torch.zeros(1, SLICE.text_len, SLICE.text_dim)
    context[:, :64] = torch.randn(1, 64, SLICE.text_dim, generator=gen)
    return model, dict(x=torch.randn(1, 16, frames, size, size, generator=gen), context=context)


def peer_of(model: WanDiT, dtype: torch.dtype) -> torch.nn.Module:
    """diffusers' model with the same weights in ``dtype``, keeping the modules it keeps in fp32
    (``_keep_in_fp32_modules``: norms, time embedder, RoPE), as its ``from_pretrained`` does."""
    import diffusers

    peer = diffusers.WanTransformer3DModel(**dit_keys.diffusers_config(model.config)).eval()
    peer.load_state_dict(dit_keys.official_to_diffusers(model.state_dict()), strict=True)
    keep = getattr(peer, "_keep_in_fp32_modules", None) or []
    for name, param in peer.named_parameters():
        if not any(k in name.split(".") for k in keep):
            param.data = param.data.to(dtype)
    return peer


def variants(model: WanDiT, inputs: dict[str, torch.Tensor], dtype: torch.dtype,
             peer_compile: bool) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, float]]:
    """Callables for every variant (bf16/fp32 copies of the same weights) and their compile times."""
    ours, twin = copy.deepcopy(model).to(dtype), copy.deepcopy(model).to(dtype)
    compile_blocks(twin)
    peer = peer_of(model, dtype)
    calls_extra = {}
    if dtype != torch.float32:  # the time MLP computes in fp32: stored so, its weights need no cast
        fp32_time = copy.deepcopy(twin)
        fp32_time.time_embedding.float()
        fp32_time.time_projection.float()
        calls_extra[FP32_TIME] = lambda: fp32_time(x, t, context)
    x, context, t = inputs["x"].to(dtype), inputs["context"].to(dtype), torch.tensor([700.0])
    calls = {EAGER: lambda: ours(x, t, context), COMPILED: lambda: twin(x, t, context),
             PEER: lambda: peer(hidden_states=x, timestep=t, encoder_hidden_states=context,
                                return_dict=False)[0], **calls_extra}
    if peer_compile and hasattr(peer, "compile_repeated_blocks"):
        peer_c = peer_of(model, dtype)
        peer_c.compile_repeated_blocks(fullgraph=True)
        calls[PEER_COMPILED] = lambda: peer_c(hidden_states=x, timestep=t, encoder_hidden_states=context,
                                              return_dict=False)[0]
    compile_s = {}
    for name in (COMPILED, FP32_TIME, PEER_COMPILED):
        if name in calls:
            start = time.perf_counter()
            calls[name]()
            compile_s[name] = time.perf_counter() - start
    return calls, compile_s


def run_case(label: str, model: WanDiT, inputs: dict[str, torch.Tensor], dtype: torch.dtype,
             rounds: int, clock: str, peer_compile: bool) -> dict:
    torch._dynamo.reset()
    with torch.no_grad():
        calls, compile_s = variants(model, inputs, dtype, peer_compile)
        outputs = {name: call().float() for name, call in calls.items()}
        times = timed_rounds(calls, rounds, lambda: None, CLOCKS[clock])
    return dict(label=label, dtype=str(dtype).replace("torch.", ""), times=times, compile_s=compile_s,
                outputs=outputs, rounds=rounds)


def ratio(times: dict[str, list[float]], a: str, b: str) -> str:
    if a not in times or b not in times:
        return "–"
    return f"{statistics.median(x / y for x, y in zip(times[a], times[b])):.2f}x"


def format_report(args: argparse.Namespace, results: list[dict], shapes: dict[str, str]) -> str:
    lines = [
        "# DiT forward on the CPU: compiled blocks vs eager, and vs diffusers",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit `{git_commit()}`",
        f"- Machine: {machine_description('cpu')}; torch {torch.__version__}, {args.threads} thread(s), "
        f"{args.clock} clock",
        *(f"- {label}: {text}" for label, text in shapes.items()),
        "- Compiled: `wan.compiled_blocks.compile_blocks` (inductor, dynamic=False, one graph for all blocks); "
        "diffusers compiled: its `compile_repeated_blocks(fullgraph=True)`",
        f"- Command: `python bench/compile_cpu.py --cases {' '.join(args.cases)} --dtypes {' '.join(args.dtypes)} "
        f"--rounds {args.rounds} --bf16-rounds {args.bf16_rounds} --threads {args.threads} --clock {args.clock}`",
        "",
        "Ratios are medians of per-round ratios (each round times every variant once, round-robin).",
        "",
        "| case | dtype | variant | median ms | min ms | vs ours eager | vs diffusers eager | first call s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for name, times in r["times"].items():
            compile_s = r["compile_s"].get(name)
            lines.append(
                f"| {r['label']} | {r['dtype']} | {name} | {statistics.median(times) * 1e3:.1f} | "
                f"{min(times) * 1e3:.1f} | {ratio(r['times'], name, EAGER)} | {ratio(r['times'], name, PEER)} | "
                f"{'' if compile_s is None else f'{compile_s:.0f}'} |")
    lines += ["", "Output agreement (max abs difference against ours, eager; output scale in brackets):", ""]
    for r in results:
        ref = r["outputs"][EAGER]
        diffs = ", ".join(f"{name} {(out - ref).abs().max():.2g}" for name, out in r["outputs"].items()
                          if name != EAGER)
        lines.append(f"- {r['label']} {r['dtype']} ({ref.abs().max():.3g}): {diffs}")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    cases, shapes = {}, {}
    if "nano" in args.cases:
        cases["nano"] = nano_case()
        cfg = cases["nano"][0].config
        shapes["nano"] = (f"`{NANO.t2v_high}` (dim {cfg.dim}, {cfg.num_layers} blocks, ffn {cfg.ffn_dim}); "
                          "x [1,16,5,8,8] = 80 tokens, 512 text tokens (12 non-zero)")
    if "slice" in args.cases:
        cases["slice"] = slice_case(args.frames, args.size)
        tokens = args.frames * (args.size // 2) ** 2
        shapes["slice"] = (f"random WanDiT dim {SLICE.dim}, {SLICE.num_heads} heads, ffn {SLICE.ffn_dim}, "
                           f"{SLICE.num_layers} blocks; x [1,16,{args.frames},{args.size},{args.size}] = "
                           f"{tokens} tokens, 512 text tokens (64 non-zero)")
    results = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        rounds = args.rounds if dtype == torch.float32 else args.bf16_rounds
        for label, (model, inputs) in cases.items():
            results.append(run_case(label, model, inputs, dtype, rounds, args.clock,
                                    not args.no_peer_compile))
            print(format_report(args, results, shapes), flush=True)
    report = format_report(args, results, shapes)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
