"""``wanflow train-lora DATA_DIR --model FILE [--model-low FILE] --vae FILE --text-encoder FILE --output FILE``.

The command behind the *Train LoRA* node, for a shell: it loads the files through the pack's
loaders (every layout and storage dtype they read), then runs the same job as the node
(``train.lora_job``: output names checked first, clips encoded and cached, train, save).
A stopped run resumes from its work folder when started again with the same options.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import errors

EXPERT_CHOICES = ("auto", "full", "high", "low")


def add_parser(sub) -> None:
    p = sub.add_parser("train-lora", help="train a LoRA on a folder of captioned clips (name.mp4 + name.txt)")
    p.add_argument("data", type=Path, metavar="DATA_DIR", help="clips (.mp4/.webm or folders of PNG frames), "
                   "each with a .txt caption beside it")
    p.add_argument("--model", type=Path, required=True, help="the Wan DiT file (the high-noise expert for a pair)")
    p.add_argument("--model-low", type=Path, help="Wan 2.2 low-noise expert: train a high/low pair")
    p.add_argument("--vae", type=Path, required=True, help="the VAE file matching the model")
    p.add_argument("--text-encoder", type=Path, required=True, help="the umT5 file (tokenizer embedded or beside it)")
    p.add_argument("--output", type=Path, required=True, help="LoRA file to write (a pair adds _high_noise/_low_noise)")
    p.add_argument("--expert", choices=EXPERT_CHOICES, default="auto",
                   help="noise range: full, or a Wan 2.2 expert's side of the boundary (auto: the model's own)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank)")
    p.add_argument("--blocks", help="comma-separated block indices to adapt (default: all)")
    p.add_argument("--targets", help="comma-separated Linear layers per block, e.g. self_attn.q,ffn.0")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shift", type=float, help="sigma shift (default: the model's sampling shift)")
    p.add_argument("--width", type=int, default=832, help="size bucket width (default 832)")
    p.add_argument("--height", type=int, default=480, help="size bucket height (default 480)")
    p.add_argument("--max-frames", type=int, default=81, help="longest clip kept, in frames (default 81)")
    p.add_argument("--storage-dtype", default=None,
                   help="store the frozen base as this dtype (e.g. bf16, fp8_e4m3fn); default: the file's own")
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory")
    p.add_argument("--work", type=Path, help="checkpoint folder (default: beside the output)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _indices(text: str | None, what: str) -> tuple | None:
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise errors.UsageError(f"train-lora: --{what} takes comma-separated integers, got {text!r}") from None


def _check_files(args: argparse.Namespace) -> None:
    for flag, path in (("DATA_DIR", args.data), ("--model", args.model), ("--model-low", args.model_low),
                       ("--vae", args.vae), ("--text-encoder", args.text_encoder)):
        if path is not None and not path.exists():
            raise errors.MissingFileError(f"train-lora: {flag} {path} does not exist")


def train_lora_command(args: argparse.Namespace) -> int:
    """Check everything cheap first, then load the models and train."""
    import torch

    from ..model_loaders.dit_loader import load_dit
    from ..model_loaders.text_encoder_loader import load_text_encoder
    from ..model_loaders.vae_loader import load_vae
    from ..train.clip_folder import ClipOptions
    from ..train.lora_job import (BaseModel, Encoders, LoraJob, check_outputs, module_fingerprint, read_clips,
                                  resolve_expert, train_and_save, train_config)

    try:
        _check_files(args)
        clips = ClipOptions(width=args.width, height=args.height, max_frames=args.max_frames)
        blocks = _indices(args.blocks, "blocks")
        targets = tuple(args.targets.split(",")) if args.targets else None
        pair = args.model_low is not None
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        high = load_dit(args.model, args.storage_dtype)
        expert = resolve_expert(args.expert, pair, high.variant.expert)
        cfg = train_config(shift=args.shift or high.variant.defaults.shift, steps=args.steps, lr=args.lr,
                           rank=args.rank, alpha=args.alpha, expert=expert, batch=args.batch, seed=args.seed,
                           gradient_checkpointing=not args.no_gradient_checkpointing, blocks=blocks, targets=targets)
        job = LoraJob(args.data, args.output, cfg, clips, args.work)
        check_outputs(job, pair)  # before the other files load and the clips encode
        low = load_dit(args.model_low, args.storage_dtype) if pair else None
        vae, text = load_vae(args.vae), load_text_encoder(args.text_encoder)
        vae_model, text_model = vae.model.float().to(device), text.model.to(device)
        data = read_clips(job, Encoders(vae_model, text_model, text.tokenizer,
                                        module_fingerprint(vae_model) + module_fingerprint(text_model)))
        models = [BaseModel(m.model.to(device), Path(p).name)
                  for m, p in ((high, args.model), (low, args.model_low)) if m is not None]
        written = train_and_save(job, data, models[0], models[1] if pair else None, quiet=args.quiet)
    except KeyboardInterrupt:
        print("wanflow: interrupted; run the same command again to resume", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    except errors.RunnerError as exc:
        print(f"wanflow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"wanflow: error: {exc}", file=sys.stderr)
        return errors.EXIT_USAGE
    for path in written.values():
        print(path)
    return errors.EXIT_OK
