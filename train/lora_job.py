"""One LoRA training job from already-loaded models: read the clip folder, train, save the file(s).

``wanflow train-lora`` (files in, via the loaders) and the *Train LoRA* node (models from the
graph's loader nodes) both end here, so they share every option, check and default:

1. every output name is checked before any slow work (a finished LoRA is never overwritten);
2. the clip folder is encoded once with the graph's own VAE and text encoder, and cached;
3. the trainer runs (resumable from ``work``), for one model or a Wan 2.2 high/low pair;
4. the file(s) are written in ComfyUI's LoRA format, named for the expert(s).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..samplers.guidance import OFFICIAL_NEGATIVE_PROMPT
from ..wan.dit import WanDiT
from ..wan.latent_stats import stats_for_channels
from ..wan.umt5 import encode_prompts
from .clip_folder import ClipFolderData, ClipOptions, load_clip_folder
from .loop import LoopConfig
from .lora_network import LoraConfig, expert_file_paths
from .lora_trainer import Expert, LoraTrainConfig, save_pair, train_lora, train_lora_pair

UNCOND_PROMPTS = ("", OFFICIAL_NEGATIVE_PROMPT)
"""What caption dropout swaps in: the empty prompt and the official negative prompt."""
ProgressHook = Callable[[str, int, float], None]
"""``hook(expert, step, loss)`` after each step; raising stops training (resume later)."""


@dataclass(frozen=True)
class BaseModel:
    """A frozen Wan DiT to train on, with the file name written into the LoRA's metadata."""

    model: WanDiT
    name: str


@dataclass(frozen=True)
class Encoders:
    """The graph's VAE and umT5 (with tokenizer), and a name for them that keys the clip cache."""

    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    identity: str


@dataclass(frozen=True)
class LoraJob:
    """What to train and where to write it.

    ``low`` given: a Wan 2.2 pair (``high`` is the high-noise expert), written as
    ``<output stem>_high_noise`` / ``_low_noise``; else one file at ``output`` for ``train.expert``.
    ``work`` holds checkpoints (default: ``<output dir>/.wanflow_lora_work/<output stem>``).
    """

    data: Path
    output: Path
    train: LoraTrainConfig
    clips: ClipOptions = field(default_factory=ClipOptions)
    work: Optional[Path] = None

    def work_dir(self) -> Path:
        return self.work if self.work is not None else self.output.parent / ".wanflow_lora_work" / self.output.stem

    def output_paths(self, pair: bool) -> dict[str, Path]:
        return expert_file_paths(self.output) if pair else {self.train.expert: self.output}


def check_outputs(job: LoraJob, pair: bool) -> None:
    """Refuse before any work if a file the job would write already exists."""
    existing = [str(p) for p in job.output_paths(pair).values() if p.exists()]
    if existing:
        raise FileExistsError(f"train LoRA: {', '.join(existing)} already exist(s); choose another output name "
                              "(a finished LoRA is never overwritten)")
    if not job.data.is_dir():
        raise FileNotFoundError(f"train LoRA: clip folder {job.data} does not exist or is not a folder")


def resolve_expert(choice: str, pair: bool, model_expert: Optional[str]) -> Expert:
    """The noise range of a run: ``choice`` ("auto": the loaded expert's own, else the full range);
    a pair trains each expert on its own side whatever ``choice`` says."""
    if pair:
        return "full"
    if choice == "auto":
        return model_expert or "full"  # type: ignore[return-value]
    return choice  # type: ignore[return-value]


@torch.no_grad()
def module_fingerprint(module: torch.nn.Module) -> str:
    """A short content key of a loaded model (shapes, dtypes and per-tensor sums), so the clip
    cache is never reused with other encoder weights."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}{float(tensor.double().sum()):.9e}".encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def read_clips(job: LoraJob, encoders: Encoders) -> ClipFolderData:
    """The clip folder encoded with ``encoders`` (cached beside the clips)."""
    vae = encoders.vae
    stats = stats_for_channels(vae.z_dim)
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return stats.normalize(vae.encode(pixels.to(device, dtype)).float())

    def encode_text(prompts: list[str]) -> torch.Tensor:
        return encode_prompts(encoders.text_encoder, encoders.tokenizer, prompts).float()

    return load_clip_folder(job.data, job.clips, encode, encode_text, encoders.identity,
                            uncond_prompts=UNCOND_PROMPTS)


def train_and_save(job: LoraJob, data: ClipFolderData, high: BaseModel, low: Optional[BaseModel] = None, *,
                   quiet: bool = False, on_step: Optional[ProgressHook] = None) -> dict[str, Path]:
    """Train on encoded clips (resuming from ``job.work_dir()``) and write the file(s); returns
    the written file of each expert (``full``/``high``/``low``)."""
    work = job.work_dir()
    name = f"lora {job.output.stem}"
    if low is None:
        hook = None if on_step is None else (lambda step, loss: on_step(job.train.expert, step, loss))
        trained = train_lora(high.model, data.latents, data.text, job.train, work, name=name, quiet=quiet,
                             on_step=hook)
        return {job.train.expert: trained.save(job.output, high.name)}
    pair = train_lora_pair(high.model, low.model, data.latents, data.text, job.train, work, name=name,
                           quiet=quiet, on_step=on_step)
    return save_pair(pair, job.output, {"high": high.name, "low": low.name})


def train_config(*, shift: float, steps: int = 1000, lr: float = 1e-4, rank: int = 16, alpha: Optional[float] = None,
                 expert: Expert = "full", batch: int = 1, seed: int = 0, gradient_checkpointing: bool = True,
                 blocks: Optional[tuple[int, ...]] = None, targets: Optional[tuple[str, ...]] = None,
                 checkpoint_every: int = 100, compute_dtype: torch.dtype = torch.float32) -> LoraTrainConfig:
    """The user-facing options (those of the command and the node) as a trainer config."""
    lora = LoraConfig(rank=rank, alpha=float(rank if alpha is None else alpha), blocks=blocks,
                      **({"targets": targets} if targets else {}))
    loop = LoopConfig(steps=steps, lr=lr, warmup=min(50, max(1, steps // 20)), weight_decay=0.01,
                      checkpoint_every=checkpoint_every)
    return LoraTrainConfig(shift=shift, lora=lora, loop=loop, expert=expert, batch=batch, seed=seed,
                           gradient_checkpointing=gradient_checkpointing, compute_dtype=compute_dtype)
