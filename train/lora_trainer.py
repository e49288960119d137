"""Train a LoRA on a loaded Wan DiT from cached latents and text contexts.

The pieces are the ones the pack's own models were trained with: the flow-matching loss on the
Wan velocity target (``flow_matching.py``), sigmas spaced with the sampler's shift and cut to an
expert's range, the resumable AdamW loop with cosine LR, loss log and checkpoints (``loop.py``),
and random batches with caption dropout (``nano_dit.Batches``). Only the LoRA factors train and
are checkpointed; the base stays frozen in its storage dtype (``lora_network.py``).

Wan 2.2 A14B: the high-noise expert runs while ``sigma >= boundary`` when sampling
(``samplers/moe.py``), so its LoRA trains on that range and the low-noise expert's LoRA on the
rest; :func:`train_lora_pair` trains both and :func:`save_pair` writes them as the
``_high_noise`` / ``_low_noise`` files users share.

Text contexts are cut to their longest caption and the DiT runs with the collapsed padding of
``wan/text_padding.py`` while training: the same maths as the 512-row padded context, without
holding or projecting hundreds of zero rows per step (memory and time; see
``bench/lora_train_memory.py``).

Input data is duck-typed (:class:`LatentData`, :class:`TextData`): ``nano_latents.LatentSet`` /
``TextTable`` fit, and so does anything a clip-folder reader caches.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping, Optional, Protocol, Union

import torch

from ..samplers.moe import DEFAULT_BOUNDARY
from ..wan.dit import WanDiT
from ..wan.text_padding import real_length
from .flow_matching import SigmaRange, expert_sigmas, flow_matching_loss
from .lora_network import (LoraConfig, LoraNetwork, attach_lora, expert_file_paths, lora_metadata,
                           save_lora)
from .loop import LoopConfig, train
from .nano_dit import Batches

Expert = Literal["full", "high", "low"]
EXPERTS: tuple[Expert, ...] = ("full", "high", "low")
StepHook = Callable[[int, float], None]
"""``hook(step, loss)`` after each step's loss is computed; raising stops training (the next run
resumes from the last checkpoint)."""
OPTIONS_FILE = "lora_options.json"


class LatentData(Protocol):
    """Normalised latents ``[N, C, F, H, W]``, the caption row of each, and the I2V condition."""

    latents: torch.Tensor
    caption_index: torch.Tensor
    i2v_y: Optional[torch.Tensor]


class TextData(Protocol):
    """DiT contexts ``[captions, L, text_dim]`` and the unconditional prompts ``[U, L, text_dim]``
    that caption dropout swaps in."""

    contexts: torch.Tensor
    uncond: torch.Tensor


@dataclass(frozen=True)
class LoraTrainConfig:
    """Every option of one LoRA training run.

    ``shift`` is the sampler's shift for the model (sigmas are spaced as sampling spaces them);
    ``expert`` picks the noise range: ``full``, or a Wan 2.2 expert's side of ``boundary`` (None:
    the sampler's default, 0.875 T2V / 0.900 I2V). ``compute_dtype`` is the activation dtype
    (bf16 on GPUs); the LoRA delta is always computed in float32.
    """

    shift: float
    lora: LoraConfig = LoraConfig()
    loop: LoopConfig = LoopConfig(steps=1000, lr=1e-4, warmup=50, weight_decay=0.01,
                                  checkpoint_every=100)
    expert: Expert = "full"
    boundary: Optional[float] = None
    batch: int = 1
    seed: int = 0
    gradient_checkpointing: bool = True
    compute_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.expert not in EXPERTS:
            raise ValueError(f"LoraTrainConfig: expert must be one of {EXPERTS}, got {self.expert!r}")
        if not self.shift > 0:
            raise ValueError(f"LoraTrainConfig: shift must be > 0, got {self.shift}")
        if self.boundary is not None and not 0 < self.boundary < 1:
            raise ValueError(f"LoraTrainConfig: boundary must be in (0, 1), got {self.boundary}")
        if self.batch < 1 or self.loop.steps < 1:
            raise ValueError("LoraTrainConfig: batch and steps must be >= 1")


def takes_condition(model: WanDiT) -> bool:
    """Whether the model reads a channel-concat condition ``y`` (I2V)."""
    return model.config.in_dim > model.config.out_dim


def default_boundary(model: WanDiT) -> float:
    """The sampler's expert boundary for this kind of model."""
    return DEFAULT_BOUNDARY["i2v" if takes_condition(model) else "t2v"]


@dataclass
class TrainedLora:
    """The trained adapters and what they were trained for."""

    network: LoraNetwork
    config: LoraTrainConfig
    sigmas: SigmaRange
    work: Path

    def metadata(self, base_model: str) -> dict[str, str]:
        cfg = self.config
        return lora_metadata(self.network, base_model=base_model, steps=cfg.loop.steps, extra={
            "expert": cfg.expert, "sigma_low": f"{self.sigmas.low:g}", "sigma_high": f"{self.sigmas.high:g}",
            "shift": f"{cfg.shift:g}", "learning_rate": f"{cfg.loop.lr:g}", "batch": cfg.batch,
            "seed": cfg.seed})

    def save(self, path: Union[str, Path], base_model: str, *, dtype: torch.dtype = torch.float32,
             overwrite: bool = False) -> Path:
        """Write the ComfyUI-format LoRA file (never over an existing one unless ``overwrite``)."""
        return save_lora(self.network, path, self.metadata(base_model), dtype=dtype, overwrite=overwrite)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def train_lora(model: WanDiT, data: LatentData, text: TextData, cfg: LoraTrainConfig, work: Path, *,
               name: str = "lora", quiet: bool = False, on_step: Optional[StepHook] = None) -> TrainedLora:
    """Train a LoRA for ``model`` on ``data``, resuming from ``work`` when it holds a checkpoint.

    The model is left as it was (adapters detached, ``requires_grad`` restored) whether training
    finishes or stops.
    """
    work = Path(work)
    _check_inputs(model, data)
    boundary = default_boundary(model) if cfg.boundary is None else cfg.boundary
    sigmas = expert_sigmas(cfg.expert, cfg.shift, boundary)
    _claim_work(work, model, cfg, boundary)
    network = LoraNetwork.for_model(model, cfg.lora, seed=cfg.seed)
    batches = Batches(data, _trimmed(text), torch.Generator().manual_seed(cfg.seed + 1),  # type: ignore[arg-type]
                      with_y=takes_condition(model))
    noise_gen = torch.Generator().manual_seed(cfg.seed + 2)
    loss_fn = _loss_fn(model, batches, noise_gen, sigmas, cfg, on_step)
    collapsed = model.collapse_text_padding
    model.collapse_text_padding = True
    try:
        with attach_lora(model, network, gradient_checkpointing=cfg.gradient_checkpointing):
            train(name, network, network.parameters(), loss_fn, cfg.loop, work,
                  {"data": batches.generator, "noise": noise_gen}, quiet)
    finally:
        model.collapse_text_padding = collapsed
    return TrainedLora(network, cfg, sigmas, work)


@dataclass
class _TrimmedText:
    contexts: torch.Tensor
    uncond: torch.Tensor


def _trimmed(text: TextData) -> TextData:
    """``text`` without the zero rows every context and unconditional prompt share at the end
    (the DiT pads them back, or collapses them, itself)."""
    keep = max(real_length(text.contexts), real_length(text.uncond))
    return _TrimmedText(text.contexts[:, :keep].contiguous(), text.uncond[:, :keep].contiguous())


def train_lora_pair(high: WanDiT, low: WanDiT, data: LatentData, text: TextData, cfg: LoraTrainConfig,
                    work: Path, *, name: str = "lora", quiet: bool = False,
                    on_step: Optional[Callable[[str, int, float], None]] = None) -> dict[str, TrainedLora]:
    """A Wan 2.2 pair: a LoRA for the high-noise expert on its range, one for the low-noise expert
    on the rest, each in its own ``work`` subfolder (``cfg.expert`` is ignored)."""
    out: dict[str, TrainedLora] = {}
    for offset, (expert, model) in enumerate((("high", high), ("low", low))):
        expert_cfg = dataclasses.replace(cfg, expert=expert, seed=cfg.seed + 100 * offset)
        hook = None if on_step is None else (lambda step, loss, e=expert: on_step(e, step, loss))
        out[expert] = train_lora(model, data, text, expert_cfg, Path(work) / expert,
                                 name=f"{name} {expert}", quiet=quiet, on_step=hook)
    return out


def save_pair(trained: Mapping[str, TrainedLora], output: Union[str, Path], base_models: Mapping[str, str], *,
              dtype: torch.dtype = torch.float32, overwrite: bool = False) -> dict[str, Path]:
    """Write a high/low pair as ``<name>_high_noise`` / ``<name>_low_noise`` beside ``output``.

    Both names are checked before either file is written, so a clash leaves nothing half-saved.
    """
    paths = expert_file_paths(output, tuple(trained))
    clash = [str(p) for p in paths.values() if p.exists()]
    if clash and not overwrite:
        raise FileExistsError(f"{', '.join(clash)} already exist; choose another name or pass overwrite=True")
    return {e: t.save(paths[e], base_models[e], dtype=dtype, overwrite=overwrite) for e, t in trained.items()}


def _check_inputs(model: WanDiT, data: LatentData) -> None:
    cfg = model.config
    if cfg.has_image_input:
        raise ValueError("LoRA training does not support Wan 2.1 I2V/FLF2V models yet: they need "
                         "CLIP image features per clip, which the latent cache does not hold")
    if data.latents.shape[1] != cfg.out_dim:
        raise ValueError(f"the cached latents have {data.latents.shape[1]} channels; this "
                         f"{cfg.model_type} model works on {cfg.out_dim}-channel latents")
    if takes_condition(model) and data.i2v_y is None:
        raise ValueError(f"this {cfg.model_type} model needs the I2V condition y of each clip; "
                         "the latent cache has none (encode the clips' first frames)")


def _loss_fn(model: WanDiT, batches: Batches, noise_gen: torch.Generator, sigmas: SigmaRange,
             cfg: LoraTrainConfig, on_step: Optional[StepHook]):
    """One flow-matching loss per step. Random draws happen on CPU generators, so a run is the
    same on every device and resumes exactly; the target stays in float32 whatever
    ``compute_dtype``."""
    device = next(model.parameters()).device

    def forward(x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y=None) -> torch.Tensor:
        return model(x_t.to(cfg.compute_dtype), t, context, y=y)

    def loss_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x0, context, y = batches(cfg.batch)
        sigma = sigmas.sample(x0.shape[0], noise_gen)
        noise = torch.randn(x0.shape, generator=noise_gen)
        x0, context, sigma, noise = (v.to(device) for v in (x0.float(), context, sigma, noise))
        loss = flow_matching_loss(forward, x0, context, sigma, noise,
                                  y=None if y is None else y.to(device))
        if on_step is not None:
            on_step(step, float(loss.detach()))
        return loss, {}

    return loss_fn


def _identity(model: WanDiT, cfg: LoraTrainConfig, boundary: float) -> dict[str, object]:
    """What a resumed run must share with the run that wrote the checkpoint."""
    lora = cfg.lora
    return {"model": {"type": model.config.model_type, "dim": model.config.dim,
                      "layers": model.config.num_layers},
            "rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets),
            "blocks": None if lora.blocks is None else list(lora.blocks),
            "expert": cfg.expert, "boundary": boundary, "shift": cfg.shift, "seed": cfg.seed,
            "batch": cfg.batch}


def _claim_work(work: Path, model: WanDiT, cfg: LoraTrainConfig, boundary: float) -> None:
    """Refuse to resume a checkpoint made for another LoRA; record this run's identity."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / OPTIONS_FILE
    identity = json.loads(json.dumps(_identity(model, cfg, boundary)))
    if (work / "checkpoint.pt").exists() and path.exists():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        if changed:
            raise ValueError(f"{work} holds a checkpoint of another LoRA run (different {', '.join(changed)}); "
                             "use a new work folder or the original options")
    path.write_text(json.dumps(identity, indent=1))
