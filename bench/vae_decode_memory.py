"""Peak memory of a Wan VAE decode vs clip length: ours (streaming) next to diffusers.

Claim under test: decoding 21 latent frames (81 video frames) needs at most 1.15x the peak working
memory of decoding 5 latent frames (17 video frames), because our decoder holds one latent frame
plus a fixed 2-frame cache per causal conv, and writes each pixel chunk into a preallocated output.

How memory is measured (CPU): every case runs in a fresh subprocess. After building the model and
the latents, the child trims the heap (``malloc_trim``), records its resident set size (RSS) as
``base``, allocates and touches the output (ours only: diffusers allocates its own), resets the
kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``) and decodes. ``VmHWM`` afterwards is the
peak RSS during the decode. We report:

- ``peak``: raw peak RSS of the process (Python, torch, weights, latents, output, work);
- ``over base``: ``peak - base``, i.e. everything the decode call needed *including* the output;
- ``working``: ``over base - output bytes``: memory over and above model, inputs and the output
  tensor. This is the number the 1.15x claim is about (the 81-frame output is necessarily ~4.7x
  the 17-frame one).

Each case runs twice: with glibc's default malloc, and with ``MALLOC_MMAP_THRESHOLD_=65536``. The
default malloc raises its mmap threshold after frees and then serves multi-MiB tensors from arenas
it rarely returns, so its RSS can jump by tens of MiB at a random chunk without any tensor being
alive; a fixed threshold maps every large tensor separately and unmaps it on free, so RSS tracks
live tensors. The 1.15x limit is checked on the fixed-threshold run; both are reported.

Usage: ``python bench/vae_decode_memory.py`` (Wan 2.1, writes bench/results/vae_decode_memory.md);
``--version 2.2`` writes bench/results/vae_decode_memory_vae22.md.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from bench_info import commit, cpu_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "vae_decode_memory.md"
LIMIT = 1.15
MALLOC_MODES = {"fixed": {"MALLOC_MMAP_THRESHOLD_": "65536"}, "default": {}}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). False if not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def build_ours(version: str, dim: int):
    """Our VAE of ``version`` with base width ``dim`` (2.2: decoder 1.6x wider, as released)."""
    if version == "2.1":
        from wanflow.wan.vae2_1 import WanVAE21, WanVAE21Config

        return WanVAE21(WanVAE21Config(dim=dim))
    from wanflow.wan.vae2_2 import WanVAE22, WanVAE22Config

    return WanVAE22(WanVAE22Config(dim=dim, decoder_dim=dim * 8 // 5))


def run_case(impl: str, version: str, dim: int, latent_frames: int, height: int, width: int, seed: int) -> dict:
    """One decode in this process; returns the measurements (sizes in MiB, time in s)."""
    import torch

    from wanflow.model_loaders import vae_keys

    torch.manual_seed(seed)
    ours = build_ours(version, dim).eval()  # weights initialised in place: no transient copies
    cfg = ours.config
    if impl == "diffusers":
        from diffusers import AutoencoderKLWan

        with torch.device("meta"):
            model = AutoencoderKLWan(**vae_keys.diffusers_config(cfg))
        model.load_state_dict(vae_keys.official_to_diffusers(ours.state_dict()), assign=True)
        model.eval()
        del ours
    z = torch.randn(1, cfg.z_dim, latent_frames, height, width, generator=torch.Generator().manual_seed(seed))
    out_shape = (1, 3, 4 * (latent_frames - 1) + 1, height * cfg.spatial_factor, width * cfg.spatial_factor)
    out_mib = torch.Size(out_shape).numel() * 4 / 2**20

    _trim_heap()
    base = _status_kib("VmRSS") / 1024
    out = torch.zeros(out_shape) if impl == "ours" else None
    reset_ok = _reset_peak()
    start = time.perf_counter()
    with torch.no_grad():
        if impl == "ours":
            result = ours.decode(z, out=out)
        else:
            result = model.decode(z).sample
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") / 1024
    assert tuple(result.shape) == out_shape
    return dict(impl=impl, latent_frames=latent_frames, frames=out_shape[2], seconds=seconds, peak=peak,
                over_base=peak - base, working=peak - base - out_mib, output=out_mib, base=base,
                peak_reset=reset_ok, checksum=float(result.double().abs().mean()))


def time_interleaved(version: str, dim: int, latent_frames: int, height: int, width: int, reps: int) -> dict:
    """Best-of-``reps`` decode time of ours and diffusers, alternating in one process so that
    load from other jobs on a shared machine hits both alike."""
    import torch
    from diffusers import AutoencoderKLWan

    from wanflow.model_loaders import vae_keys

    torch.manual_seed(0)
    ours = build_ours(version, dim).eval()
    cfg = ours.config
    theirs = AutoencoderKLWan(**vae_keys.diffusers_config(cfg)).eval()
    theirs.load_state_dict(vae_keys.official_to_diffusers(ours.state_dict()))
    z = torch.randn(1, cfg.z_dim, latent_frames, height, width, generator=torch.Generator().manual_seed(0))
    best = {"ours": float("inf"), "diffusers": float("inf")}
    with torch.no_grad():
        for _ in range(reps):
            for name, fn in (("ours", lambda: ours.decode(z)), ("diffusers", lambda: theirs.decode(z).sample)):
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
    return best



def _child(impl: str, args: argparse.Namespace, latent_frames: int, malloc: str) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--latent-frames", str(latent_frames), "--version", args.version,
           "--dim", str(args.dim), "--height", str(args.height), "--width", str(args.width)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(MALLOC_MODES[malloc])
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", choices=("2.1", "2.2"), default="2.1", help="which Wan VAE")
    parser.add_argument("--dim", type=int, help="base channels (released: 96 for 2.1, 160 for 2.2); "
                        "default 32 (2.1) / 20 (2.2)")
    parser.add_argument("--height", type=int, help="latent height; default 8 (2.1) / 4 (2.2)")
    parser.add_argument("--width", type=int, help="latent width; default 16 (2.1) / 8 (2.2)")
    parser.add_argument("--frames", type=int, nargs=2, default=(5, 21), help="short and long latent frame counts")
    parser.add_argument("--time-reps", type=int, default=3, help="interleaved timing repetitions (0: skip)")
    parser.add_argument("--time-frames", type=int, default=2, help="latent frames for the interleaved timing")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write the results file")
    parser.add_argument("--child", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--latent-frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = {"2.1": (32, 8, 16), "2.2": (20, 4, 8)}[args.version]  # 64x128 pixels either way
    args.dim, args.height, args.width = (given if given is not None else default for given, default in
                                         zip((args.dim, args.height, args.width), defaults))
    results_file = RESULTS if args.version == "2.1" else RESULTS.with_name("vae_decode_memory_vae22.md")

    if args.child:
        print(json.dumps(run_case(args.child, args.version, args.dim, args.latent_frames, args.height, args.width,
                                  seed=0)))
        return 0

    short, long = args.frames
    impls = ("ours", "diffusers")
    rows = {}
    for malloc in MALLOC_MODES:
        for impl in impls:
            for t in (short, long):
                r = rows[malloc, impl, t] = _child(impl, args, t, malloc)
                print(f"  malloc {malloc:7s} {impl:9s} T={t:2d}: {r['seconds']:6.1f} s  peak {r['peak']:7.1f} MiB  "
                      f"working {r['working']:6.1f} MiB", flush=True)

    timing = None
    if args.time_reps > 0:
        timing = time_interleaved(args.version, args.dim, args.time_frames, args.height, args.width, args.time_reps)
        print(f"  interleaved timing ({args.time_frames} latent frames, best of {args.time_reps}): {timing}", flush=True)

    def ratio(malloc: str, impl: str, field: str = "working") -> float:
        return rows[malloc, impl, long][field] / rows[malloc, impl, short][field]

    def versus(malloc: str, t: int, field: str) -> float:
        return rows[malloc, "ours", t][field] / rows[malloc, "diffusers", t][field]

    same = abs(rows["fixed", "ours", long]["checksum"] - rows["fixed", "diffusers", long]["checksum"]) < 1e-4
    passed = ratio("fixed", "ours") <= LIMIT
    factor = 8 if args.version == "2.1" else 16
    model_dims = (f"{args.dim} (released: 96)" if args.version == "2.1" else
                  f"{args.dim}, decoder {args.dim * 8 // 5} (released: 160, 256)")
    lines = [
        f"# Wan {args.version} VAE decode memory: {short} vs {long} latent frames",
        "",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- commit: {commit()}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores (shared with other jobs: times are noisy), "
        f"Linux {platform.release()}, Python {platform.python_version()}",
        f"- torch {__import__('torch').__version__}, diffusers {__import__('diffusers').__version__}",
        f"- model: Wan {args.version} VAE, random weights, base dim {model_dims}, fp32, batch 1; "
        f"latents {args.height}x{args.width} -> {args.height * factor}x{args.width * factor} px",
        "- method: fresh subprocess per case; peak = VmHWM after a `clear_refs 5` reset just before decode; "
        "working = peak - RSS(model + latents) - output bytes; malloc `fixed` = MALLOC_MMAP_THRESHOLD_=65536 "
        "(RSS tracks live tensors), `default` = glibc defaults (see the script's docstring)",
        f"- same weights and inputs for both implementations (output mean |x| equal: {same})",
        "",
        "| malloc | impl | latent frames | video frames | time s | peak RSS MiB | over base MiB | output MiB | working MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (malloc, impl, t), r in rows.items():
        lines.append(f"| {malloc} | {impl} | {t} | {r['frames']} | {r['seconds']:.1f} | {r['peak']:.1f} | "
                     f"{r['over_base']:.1f} | {r['output']:.1f} | {r['working']:.1f} |")
    lines += ["", "Ratios:", ""]
    lines.append(f"- **ours, working({long}) / working({short}), fixed malloc: {ratio('fixed', 'ours'):.3f}** "
                 f"(limit {LIMIT}: {'PASS' if passed else 'FAIL'})")
    for malloc in MALLOC_MODES:
        lines.append(f"- {malloc} malloc: working({long}) / working({short}): ours {ratio(malloc, 'ours'):.3f}, "
                     f"diffusers {ratio(malloc, 'diffusers'):.3f}")
        for t in (short, long):
            lines.append(f"- {malloc} malloc, {t} latent frames, ours / diffusers: "
                         f"peak RSS {versus(malloc, t, 'peak'):.3f}x, working {versus(malloc, t, 'working'):.3f}x, "
                         f"time {versus(malloc, t, 'seconds'):.3f}x")
    if timing is not None:
        lines.append(f"- time, interleaved in one process, {args.time_frames} latent frames, best of {args.time_reps}: "
                     f"ours {timing['ours']:.2f} s, diffusers {timing['diffusers']:.2f} s, "
                     f"ratio {timing['ours'] / timing['diffusers']:.3f}x (the per-case times above are single "
                     "runs on a shared machine)")
    longest = rows["fixed", "ours", long]
    lines += [
        "",
        "Notes: diffusers `AutoencoderKLWan` also decodes one latent frame at a time with the same cache "
        "scheme, so its working memory is flat too; it differs by concatenating the output chunk by chunk "
        "(`torch.cat` per frame: O(T^2) copying, and output + copy alive at the end) where we write into "
        f"one preallocated output. At this size the output ({longest['output']:.1f} MiB for "
        f"{longest['frames']} frames) is small against the "
        "conv work buffers, so that difference hardly shows in the peaks. Peak RSS of the diffusers "
        "process is higher mostly because importing diffusers itself costs memory.",
        "",
        "Default malloc: our decoder keeps no per-frame allocation of its own (every conv's 2-frame "
        "cache buffer is overwritten in place from the third latent frame on), so what still moves is "
        "where the allocator puts torch's temporaries. At these widths CPU conv3d takes torch's im2col "
        "path (`slow_conv3d`; oneDNN takes over for larger inputs such as the released widths), whose "
        "column buffer holds 27 values (the 3x3x3 taps) per input channel and output position, tens "
        "of MiB per call at these sizes. glibc serves such blocks below its dynamic mmap ceiling "
        "(32 MiB) from the heap, each wherever free space fits, and peak RSS records the highest "
        "point one ever reached, so the default-malloc peak moves in steps of such a buffer from run "
        "to run (diffusers' too); the fixed-threshold run shows the memory actually in use.",
    ]
    if not all(r["peak_reset"] for r in rows.values()):
        lines.append("- WARNING: /proc/self/clear_refs was not writable; peaks include model construction")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        results_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.write_text(text)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
