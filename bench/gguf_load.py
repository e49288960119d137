"""GGUF DiT files: peak memory while loading, and the per-step cost of dequantizing at run time.

Writes one synthetic model of Wan 2.1 1.3B width (dim 1536, ffn 8960, 12 heads, real key names,
``--blocks`` blocks instead of 30, random weights) in the layouts users have:

* ``bf16``: every tensor bf16, ComfyUI ``model.diffusion_model.`` layout (the reference);
* one city96-layout ``.gguf`` per type of ``--types``: the block Linears in that type, the rest as
  ComfyUI-GGUF writes it (1-D tensors and ``modulation`` F32, embeddings and head BF16, the 5-D
  patch embedding F32). Q8_0/Q4_0/Q5_0 come from ``gguf.quants.quantize``, the K types from the
  test suite's packers (``tests/gguf_fixtures.py``; gguf 0.19 has no K-type quantizer).

Load: each file is read once first (page cache), then loaded ``--repeat`` times, each in a fresh
subprocess that records its RSS after imports and a warm-up meta build (baseline) and its peak RSS
(VmHWM) after ``load_dit`` and a touch of every weight page. Ratio = (peak - baseline) / file size
(target <= 1.2).

Step: in one process, the GGUF model and the bf16 model of the same weights run the same forward
(``frames`` x 30 x 52 latent, 512 text tokens, computing in float32 as the pack does on the CPU,
both models casting their stored weights per call), alternating, ``--steps`` timed calls each
after one warm-up. Besides the whole forwards it times the weight work alone, which is where the two
differ (the matmuls are the same): every quantized layer's ``compute_weight`` (unpacking) against
the same layers of the bf16 model (a cast). On a shared machine the fastest of the calls is the
steadier figure; the table gives fastest and median, and the load average. Every type runs at the
first of ``--frames``; ``--long-types`` also at the others (the dequantization cost per step does
not grow with the video, so its share falls as the video grows).

    python bench/gguf_load.py --out bench/results/gguf_load.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))  # the K-type packers of the test suite
import gguf_fixtures as gf  # noqa: E402
from load_memory import _rss_kib, commit, machine, warm_page_cache  # noqa: E402

DEFAULT_TYPES = ("Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K")


def config(blocks: int):
    from wanflow.wan.dit_config import WanDiTConfig

    return WanDiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=blocks, model_type="t2v")


# --------------------------------------------------------------------------- files


def random_state_dict(blocks: int) -> dict[str, torch.Tensor]:
    """Well-scaled random float32 weights for every tensor of the model (one at a time in memory
    would do, but the bf16 and GGUF writers both need them, so they are kept: ~4 bytes x params)."""
    from wanflow.wan.dit import WanDiT

    with torch.device("meta"):
        model = WanDiT(config(blocks))
    gen = torch.Generator().manual_seed(0)
    out = {}
    for key, meta in model.state_dict().items():
        value = torch.randn(meta.shape, generator=gen)
        fan_in = meta[0].numel() if meta.ndim >= 2 else 1
        out[key] = value / fan_in ** 0.5 if meta.ndim >= 2 else 1.0 + 0.1 * value
    return out


def write_files(workdir: Path, blocks: int, types: list[str]) -> dict[str, Path]:
    from safetensors.torch import save_file

    files = {"bf16": workdir / f"wan_1.3B_width_{blocks}blocks_bf16.safetensors"}
    files.update({t: workdir / f"wan_1.3B_width_{blocks}blocks-{t}.gguf" for t in types})
    missing = [k for k, p in files.items() if not p.exists()]
    if not missing:
        return files
    sd = random_state_dict(blocks)
    for kind in missing:
        print(f"writing {files[kind]} ...", flush=True)
        if kind == "bf16":
            save_file({"model.diffusion_model." + k: v.to(torch.bfloat16) for k, v in sd.items()}, str(files[kind]))
        else:
            gf.city96_file(files[kind], sd, kind)
    return files


# --------------------------------------------------------------------------- load (child)


def touch(model: torch.nn.Module) -> None:
    for tensor in model.state_dict().values():
        if tensor.numel():
            tensor.reshape(-1).view(torch.uint8)[::4096].sum()


def load_case(path: Path, blocks: int) -> dict:
    import gguf  # noqa: F401 - imported before the baseline: a one-off cost of any GGUF loader

    from wanflow.model_loaders.dit_loader import load_dit
    from wanflow.wan.dit import WanDiT

    with torch.device("meta"):
        WanDiT(config(blocks))  # first meta build imports torch._dynamo: before the baseline
    baseline = _rss_kib("VmRSS")
    start = time.perf_counter()
    model = load_dit(path).model
    touch(model)
    seconds = time.perf_counter() - start
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {"baseline_kib": baseline, "peak_kib": _rss_kib("VmHWM"), "weights_bytes": weights, "seconds": seconds}


def load_repeated(path: Path, blocks: int, repeat: int) -> dict:
    runs = []
    for _ in range(max(1, repeat)):
        out = subprocess.run([sys.executable, __file__, "--child-load", str(path), "--blocks", str(blocks)],
                             check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    worst = max(runs, key=lambda r: r["peak_kib"] - r["baseline_kib"])
    return {**worst, "seconds": statistics.median(r["seconds"] for r in runs)}


# --------------------------------------------------------------------------- step timing


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_case(gguf_path: Path, bf16_path: Path, frames: int, steps: int) -> dict:
    from wanflow.model_loaders.dit_loader import load_dit
    from wanflow.wan import gguf_ops

    quantized = load_dit(gguf_path).model
    reference = load_dit(bf16_path).model
    cfg = quantized.config
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, cfg.in_dim, frames, 30, 52, generator=gen)
    t = torch.tensor([700.0])
    context = torch.randn(1, 512, cfg.text_dim, generator=gen)
    names = [name for name, m in quantized.named_modules() if gguf_ops.is_quantized(m)]
    packed = [quantized.get_submodule(n) for n in names]
    cast = [reference.get_submodule(n) for n in names]

    def forward(model):
        with torch.no_grad():
            model(x, t, context)

    def weights(layers):
        for layer in layers:
            layer.compute_weight(torch.float32)

    calls = {"gguf": lambda: forward(quantized), "bf16": lambda: forward(reference),
             "dequant": lambda: weights(packed), "cast": lambda: weights(cast)}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for call in calls.values():
        call()  # warm-up
    loads = []
    for _ in range(steps):
        for name, call in calls.items():
            times[name].append(_timed(call))
        loads.append(os.getloadavg()[0])
    out = {f"{k}_min": min(v) for k, v in times.items()} | {f"{k}_med": statistics.median(v) for k, v in times.items()}
    return out | {"tokens": frames * 15 * 26, "load": statistics.median(loads)}


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "wanflow_gguf_bench")
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    parser.add_argument("--types", nargs="*", default=list(DEFAULT_TYPES), choices=gf.QUANTIZED)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2, help="fresh-process loads per file")
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 4], help="latent frames of the timed forwards")
    parser.add_argument("--long-types", nargs="*", default=["Q8_0", "Q4_K"], choices=gf.QUANTIZED,
                        help="types also timed at the later --frames")
    parser.add_argument("--steps", type=int, default=5, help="timed forwards per model")
    parser.add_argument("--child-load", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_load:
        print(json.dumps(load_case(args.child_load, args.blocks)))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    files = write_files(args.workdir, args.blocks, args.types)
    for path in files.values():
        warm_page_cache(path)
    loads = {}
    for kind, path in files.items():
        loads[kind] = load_repeated(path, args.blocks, args.repeat)
        r = loads[kind]
        print(f"load {kind}: file {path.stat().st_size / 1e6:.0f} MB, peak - baseline "
              f"{(r['peak_kib'] - r['baseline_kib']) / 1e3:.0f} MB, {r['seconds']:.2f} s", flush=True)
    steps = {}
    cases = [(kind, args.frames[0]) for kind in args.types]
    cases += [(kind, frames) for frames in args.frames[1:] for kind in args.long_types if kind in args.types]
    for kind, frames in cases:
        steps[kind, frames] = s = step_case(files[kind], files["bf16"], frames, args.steps)
        print(f"step {kind}, {s['tokens']} tokens: gguf {s['gguf_min']:.2f} s, bf16 {s['bf16_min']:.2f} s, "
              f"dequant {s['dequant_min']:.2f} s, cast {s['cast_min']:.2f} s (fastest; load {s['load']:.1f})",
              flush=True)
    report = render(files, loads, steps, args)
    print(report)
    if args.out:
        args.out.write_text(report)


def render(files: dict[str, Path], loads: dict, steps: dict, args) -> str:
    lines = [
        "# GGUF DiT files: load memory and per-step dequantization cost",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- commit: {commit()}",
        f"- machine: {machine()}",
        f"- command: `python bench/gguf_load.py --out bench/results/gguf_load.md` (blocks {args.blocks}, "
        f"repeat {args.repeat}, frames {args.frames}, steps {args.steps}, long types {args.long_types})",
        f"- model: Wan 2.1 1.3B width (dim 1536, ffn 8960), {args.blocks} blocks, random weights; GGUF files in "
        "city96's layout (block Linears in the type, the rest F32/BF16 as ComfyUI-GGUF leaves them)",
        "- load ratio = (peak RSS - RSS after imports) / file size (target <= 1.2); files come from the page "
        "cache; each load in a fresh process (highest peak, median time)",
        "",
        "| file | file MB | weights in memory MB | peak - baseline MB | ratio to file | load + page-in s |",
        "|---|---|---|---|---|---|",
    ]
    for kind, path in files.items():
        r = loads[kind]
        size = path.stat().st_size
        delta = (r["peak_kib"] - r["baseline_kib"]) * 1024
        lines.append(f"| {kind} | {size / 1e6:.0f} | {r['weights_bytes'] / 1e6:.0f} | {delta / 1e6:.0f} "
                     f"| **{delta / size:.2f}** | {r['seconds']:.2f} |")
    lines += [
        "",
        "Per step: one forward (video tokens as given, 512 text tokens, float32 compute); the bf16 model holds "
        "the same weights in bf16 and casts them per call. Fastest of the timed calls, median in brackets; "
        "weights = the quantized layers' `compute_weight` alone (GGUF: unpacking; bf16: the same layers' cast); "
        "extra = GGUF weights - bf16 weights, the per-step cost of keeping the model quantized.",
        "",
        "| type | video tokens | GGUF step s | bf16 step s | GGUF / bf16 | GGUF weights s | bf16 weights s "
        "| extra s | extra / bf16 step | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (kind, _), s in steps.items():
        extra = s["dequant_min"] - s["cast_min"]
        lines.append(f"| {kind} | {s['tokens']} | {s['gguf_min']:.2f} ({s['gguf_med']:.2f}) "
                     f"| {s['bf16_min']:.2f} ({s['bf16_med']:.2f}) | **{s['gguf_min'] / s['bf16_min']:.2f}** "
                     f"| {s['dequant_min']:.2f} ({s['dequant_med']:.2f}) | {s['cast_min']:.2f} ({s['cast_med']:.2f}) "
                     f"| {extra:.2f} | **{extra / s['bf16_min']:.2f}** | {s['load']:.1f} |")
    lines += [
        "",
        "Notes:",
        "- Load: each quantized tensor is read once, with `readinto`, into the `uint8` buffer that becomes its "
        "layer's weight; the `gguf` reader maps the file only while the header is parsed (its pages are not "
        "touched otherwise), so RAM holds the file's bytes once, as for safetensors.",
        "- Per step: unpacking is a few memory-bound torch passes per weight (bit fields, one float32 pass "
        "for the scales, the cast), so on this CPU it costs a few times a bf16 -> float32 cast of the same "
        "layers. It does not grow with the video: the extra seconds per step are fixed, and their share falls as "
        "the token count grows (compare the rows at more tokens). Real Wan runs have 10-80x more tokens than "
        "the first rows (480p, 81 frames: 32760).",
        "- The same torch code runs on a GPU when the model computes there (the blocks move, not floats); "
        "not measured here: this machine has no GPU.",
        "- The machine is shared (2 cores, other jobs running): the load average is given per row, and the "
        "fastest call is the steadier figure.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
