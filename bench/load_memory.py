"""Peak memory while loading a >= 1 GB Wan DiT file: our loader against the usual peer paths.

Writes synthetic Wan 2.1 T2V-1.3B checkpoints (real key names and shapes, ComfyUI layout) once:

* ``bf16``: every tensor bf16 (2.84 GB, like ``wan2.1_t2v_1.3B_bf16.safetensors``);
* ``fp8_scaled``: block Linears fp8 e4m3fn + ``scale_weight`` + ``scaled_fp8`` marker, the rest
  bf16 (ComfyUI ``*_fp8_scaled`` layout, 1.5 GB).

Each file is read once beforehand so that every case starts from the page cache (as a second
load would). Then each case runs ``--repeat`` times, each time in a fresh subprocess, which records
its resident memory after imports (baseline), its peak resident memory (VmHWM) after loading, and
the wall time of load + page-in; the report gives the median time and the highest peak:

* ``ours``: ``model_loaders.dit_loader.load_dit`` (lazy reads into the final tensors, meta model,
  ``load_state_dict(assign=True)``);
* ``ours_to_fp8``: the bf16 file loaded with ``storage_dtype="fp8_e4m3fn_scaled"``;
* ``peer_assign``: ``safetensors.torch.load_file`` + the same meta model +
  ``load_state_dict(assign=True)`` (the common "low memory" path of single-file loaders);
* ``peer_classic``: ``load_file`` + a normally constructed model + ``load_state_dict`` (what a
  diffusers-style loader does without ``low_cpu_mem_usage``).

The acceptance figure is (peak - baseline) / bytes of the loaded weights, which must be <= 1.3.
Before the baseline each child builds the model once on the meta device and throws it away: the
first build pays a one-off ~1 s (the first arithmetic on a meta tensor imports ``torch._dynamo``),
which both sides would pay alike and which is reported in its own column, not in the load time.

    python bench/load_memory.py --out bench/results/load_memory.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_info import commit, cpu_model  # noqa: F401 - commit is also gguf_load's

CASES = {  # case -> (file kind, loader)
    "ours bf16": ("bf16", "ours"),
    "peer_assign bf16": ("bf16", "peer_assign"),
    "peer_classic bf16": ("bf16", "peer_classic"),
    "ours fp8_scaled": ("fp8_scaled", "ours"),
    "peer_assign fp8_scaled": ("fp8_scaled", "peer_assign"),
    "ours bf16 -> fp8 storage": ("bf16", "ours_to_fp8"),
}
SAFETENSORS_DTYPE = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3"}


# --------------------------------------------------------------------------- synthetic files


def _planned_tensors(kind: str) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(key, dtype, shape) of every tensor of the file, from the real 1.3B architecture."""
    from wanflow.wan.dit import WanDiT
    from wanflow.wan.dit_config import WAN21_T2V_1_3B

    with torch.device("meta"):
        model = WanDiT(WAN21_T2V_1_3B)
    planned = []
    for key, tensor in model.state_dict().items():
        fp8 = (kind == "fp8_scaled" and tensor.ndim == 2 and key.startswith("blocks.")
               and key.endswith(".weight"))
        planned.append((key, torch.float8_e4m3fn if fp8 else torch.bfloat16, tuple(tensor.shape)))
        if fp8:
            planned.append((key[: -len("weight")] + "scale_weight", torch.float32, ()))
    if kind == "fp8_scaled":
        planned.append(("scaled_fp8", torch.float8_e4m3fn, (0,)))
    return planned


def write_synthetic(path: Path, kind: str) -> None:
    """Stream a safetensors file tensor by tensor (never the whole model in memory)."""
    planned = _planned_tensors(kind)
    header, offset = {}, 0
    for key, dtype, shape in planned:
        nbytes = torch.empty(shape, dtype=dtype, device="meta").numel() * torch.empty((), dtype=dtype).element_size()
        name = key if key == "scaled_fp8" else "model.diffusion_model." + key
        header[name] = {"dtype": SAFETENSORS_DTYPE[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    pool = (torch.randn(16 * 1024 * 1024, generator=torch.Generator().manual_seed(0)) * 0.02)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for key, dtype, shape in planned:
            numel = torch.empty(shape, device="meta").numel()
            if key.endswith("scale_weight"):
                data = torch.tensor(0.02 / 448.0)
            else:
                data = pool[:numel] if numel <= pool.numel() else pool.repeat(numel // pool.numel() + 1)[:numel]
                data = (data / (0.02 / 448.0)).clamp(-448, 448) if dtype == torch.float8_e4m3fn else data
            f.write(data.to(dtype).reshape(-1).view(torch.uint8).numpy().tobytes())


def warm_page_cache(path: Path, chunk: int = 64 * 1024 * 1024) -> None:
    """Read the whole file once so no case pays (or skips) the disk reads another case paid."""
    buffer = bytearray(chunk)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


# --------------------------------------------------------------------------- one case (child)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def touch(model: torch.nn.Module) -> None:
    """Read one byte per page of every weight, as a first forward would.

    safetensors' ``load_file`` returns memory-mapped tensors whose pages only become resident
    when read; without this, a lazily mapped peer would look free.
    """
    for tensor in model.state_dict().values():
        if tensor.numel():
            tensor.reshape(-1).view(torch.uint8)[::4096].sum()


def run_case(loader: str, path: Path) -> dict:
    from safetensors.torch import load_file

    from wanflow.model_loaders.dit_loader import load_dit
    from wanflow.wan.dit import WanDiT
    from wanflow.wan.dit_config import WAN21_T2V_1_3B

    baseline = _rss_kib("VmRSS")  # before the warm-up build, so its imports count as before
    start = time.perf_counter()
    with torch.device("meta"):
        WanDiT(WAN21_T2V_1_3B)  # one-off import cost of the first meta build, timed on its own
    first_build = time.perf_counter() - start
    start = time.perf_counter()
    sd = None
    if loader in ("ours", "ours_to_fp8"):
        model = load_dit(path, "fp8_e4m3fn_scaled" if loader == "ours_to_fp8" else None).model
    elif loader == "peer_assign":
        sd = {k.removeprefix("model.diffusion_model."): v for k, v in load_file(str(path)).items()}
        with torch.device("meta"):
            model = WanDiT(WAN21_T2V_1_3B)
        scales = {k: sd.pop(k) for k in [k for k in sd if k.endswith("scale_weight")]}
        sd.pop("scaled_fp8", None)
        model.load_state_dict(sd, assign=True)
        for key, scale in scales.items():
            model.get_submodule(key[: -len(".scale_weight")]).set_scale_weight(scale)
    elif loader == "peer_classic":
        sd = {k.removeprefix("model.diffusion_model."): v for k, v in load_file(str(path)).items()}
        torch.set_default_dtype(torch.bfloat16)  # construct directly in the file's dtype
        model = WanDiT(WAN21_T2V_1_3B)
        torch.set_default_dtype(torch.float32)
        model.load_state_dict(sd)
    else:
        raise ValueError(loader)
    del sd  # the peers' state dict: the model keeps what it needs
    touch(model)
    seconds = time.perf_counter() - start
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return {"baseline_kib": baseline, "peak_kib": _rss_kib("VmHWM"), "weights_bytes": weights,
            "seconds": seconds, "first_build_seconds": first_build}


# --------------------------------------------------------------------------- report (parent)


def machine() -> str:
    cpu = cpu_model()
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / 2**20
    return (f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, Python {platform.python_version()}, "
            f"torch {torch.__version__}")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "wanflow_load_memory")
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeat", type=int, default=3,
                        help="fresh-process runs per case (median time, highest peak)")
    parser.add_argument("--child", nargs=2, metavar=("LOADER", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child[0], Path(args.child[1]))))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind in sorted({CASES[c][0] for c in args.cases}):
        files[kind] = args.workdir / f"wan2.1_t2v_1.3B_{kind}.safetensors"
        if not files[kind].exists():
            print(f"writing {files[kind]} ...", flush=True)
            write_synthetic(files[kind], kind)
    for path in files.values():
        warm_page_cache(path)
    rows = []
    for case in args.cases:
        kind, loader = CASES[case]
        result = run_repeated(loader, files[kind], args.repeat)
        delta = (result["peak_kib"] - result["baseline_kib"]) * 1024
        row = dict(case=case, file_gb=files[kind].stat().st_size / 1e9,
                   weights_gb=result["weights_bytes"] / 1e9, baseline_gb=result["baseline_kib"] * 1024 / 1e9,
                   peak_gb=result["peak_kib"] * 1024 / 1e9, ratio=delta / result["weights_bytes"],
                   seconds=result["seconds"], first_build=result["first_build_seconds"])
        rows.append(row)
        print(f"{case:28s} weights {row['weights_gb']:.2f} GB, peak-baseline {delta / 1e9:.2f} GB, "
              f"ratio {row['ratio']:.2f}, {row['seconds']:.1f} s (runs: "
              f"{', '.join(f'{t:.1f}' for t in result['all_seconds'])})", flush=True)
    report = render(rows, args.repeat)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


def run_repeated(loader: str, path: Path, repeat: int) -> dict:
    """``repeat`` fresh-process runs of one case: median time, highest peak (worst case)."""
    runs = []
    for _ in range(max(1, repeat)):
        out = subprocess.run([sys.executable, __file__, "--child", loader, str(path)],
                             check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    worst = max(runs, key=lambda r: r["peak_kib"] - r["baseline_kib"])
    seconds = [r["seconds"] for r in runs]
    return {**worst, "seconds": statistics.median(seconds), "all_seconds": seconds}


def render(rows: list[dict], repeat: int) -> str:
    lines = [
        "# Peak memory while loading a Wan DiT file",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- commit: {commit()}",
        f"- machine: {machine()}",
        "- command: `python bench/load_memory.py --out bench/results/load_memory.md`",
        "- model: synthetic Wan 2.1 T2V-1.3B (real keys and shapes, ComfyUI `model.diffusion_model.` layout)",
        "- the files are read once first, so every case loads from the page cache",
        f"- each case runs {repeat} times, each in a fresh subprocess; time = median, peak = highest",
        "- after loading, one byte per page of every weight is read (as a first forward would), so "
        "memory-mapped peers count the pages they use",
        "- load + page-in s: open the file, build the model on the meta device, fill it, touch every "
        "page; the one-off first meta build of a process (`torch._dynamo` import) is done before "
        "and shown on its own",
        "- ratio = (peak RSS - RSS after imports) / bytes of the loaded weights (target <= 1.3); "
        "the peak includes what the first meta build imports (~0.08 GB), as in earlier reports",
        "",
        "| case | file GB | loaded weights GB | RSS after imports GB | peak RSS GB | memory ratio "
        "| load + page-in s | one-off first meta build s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['file_gb']:.2f} | {r['weights_gb']:.2f} | {r['baseline_gb']:.2f} "
                     f"| {r['peak_gb']:.2f} | **{r['ratio']:.2f}** | **{r['seconds']:.2f}** "
                     f"| {r['first_build']:.2f} |")
    by_case = {r["case"]: r for r in rows}
    for kind in ("bf16", "fp8_scaled"):
        ours, peer = by_case.get(f"ours {kind}"), by_case.get(f"peer_assign {kind}")
        if ours and peer:
            lines.append("")
            lines.append(f"{kind}: memory: ours {ours['ratio']:.2f}x the weights, the load_file + "
                         f"assign peer {peer['ratio']:.2f}x (ours / peer = "
                         f"{ours['ratio'] / peer['ratio']:.2f}); time: ours {ours['seconds']:.2f} s, "
                         f"peer {peer['seconds']:.2f} s (ours / peer = "
                         f"{ours['seconds'] / peer['seconds']:.2f}).")
    lines += [
        "",
        "Notes:",
        "- Both low-memory paths keep one copy of the weights. `load_file` returns tensors mapped "
        "from the file (pages stay in the page cache and count once touched); ours reads each "
        "tensor once into its own buffer (no file stays mapped or open), which costs one memory "
        "copy and is why it is slower here. We keep the copy on purpose: tensors at unaligned file "
        "offsets make CPU kernels round differently, so mapped weights would give outputs that "
        "depend on the file layout.",
        "- Where our extra time goes: most of a read is the kernel faulting in and zeroing the "
        "fresh buffer's pages, not the copy (2.84 GB from the page cache: 1.5-1.9 s into fresh "
        "buffers, 0.33 s into an already-touched buffer). Our loader therefore keeps several reads "
        "in flight (`Checkpoint.read_ahead`, up to min(4, cores) threads); the mapped peer pays "
        "neither zeroing nor copying.",
        "- `peer_classic` builds the model with its own parameters first and copies the state dict "
        "into them: two copies.",
        "- bf16 -> fp8 at load time converts tensor by tensor through reused scratch buffers; "
        "before that change the same case peaked at 2.38x (heap fragmentation from per-tensor "
        "temporaries).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
