"""``wanflow train-nano``: regenerate every WanNano file from scratch, in resumable stages.

Stages run in this order and each can run alone (``--stage NAME``): a stage reads the *files*
written by the stages before it (through the normal loaders, exactly as the demo will), so a
later stage can be retrained without repeating the earlier ones. Work files (checkpoints, loss
logs, latent caches) live in ``work``; finished models are written to ``out`` (the pack's
``nano/models`` by default) only when their stage completes.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..model_loaders.dit_loader import load_dit
from ..model_loaders.text_encoder_loader import LoadedTextEncoder, load_text_encoder
from ..model_loaders.vae_loader import load_vae
from ..nano.clips import centred_placement, random_placement
from ..nano.files import LORA_STYLES, MODELS_DIR, NANO
from ..nano.vocabulary import Scene
from ..wan.dit import WanDiT
from ..wan.vae2_1 import WanVAE21
from . import nano_dit, nano_loras, nano_vace
from .nano_data import Placer, clip_set
from .loop import LoopConfig
from .lora_trainer import save_pair
from .nano_files import save_dit, save_tensors, save_vae
from .nano_latents import LatentSet, TextTable, add_i2v_condition, encode_clip_set, text_table
from .nano_text import text_encoder_file
from .nano_vae import FIT_CLIPS, fit_latent, harden_decoder, polish_decoder, rescale_decoder, train_vae

log = logging.getLogger("wanflow.train")

CLIPS_PER_SCENE = 16


@dataclass(frozen=True)
class LatentSetSpec:
    """One cached training set: its file stem in ``work``, where its clips place the object, and
    whether it carries the I2V first-frame conditions."""

    stem: str
    placement: Placer
    with_i2v: bool = False


LATENT_SETS = {"t2v": LatentSetSpec("latents", centred_placement),
               "i2v": LatentSetSpec("i2v_latents", random_placement, with_i2v=True)}
"""The cached latent sets by the task whose clips they hold (VACE reads the ``t2v`` one)."""


@dataclass
class StageContext:
    out: Path = MODELS_DIR
    work: Path = Path(".nano-work")
    seed: int = 0
    quiet: bool = False
    clips_per_scene: int = CLIPS_PER_SCENE
    scenes: Optional[list[Scene]] = None      # default: every training scene
    loops: dict[str, LoopConfig] = field(default_factory=dict)
    """Per-stage loop overrides (``"vae"``, ``"vae_decoder"``, ``"t2v_base"``, ``"expert"``, ``"uncond"``,
    ``"vace"``, ``"lora"``), e.g. for smoke tests."""
    fit_clips: int = FIT_CLIPS
    """Clips encoded to fit the VAE's latent (fewer in smoke tests)."""
    _cache: dict = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return NANO.path(name, self.out)

    def vae(self) -> WanVAE21:
        if "vae" not in self._cache:
            self._cache["vae"] = load_vae(self._need(NANO.vae, "vae")).model.float()
        return self._cache["vae"]

    def text(self) -> LoadedTextEncoder:
        if "text" not in self._cache:
            self._cache["text"] = load_text_encoder(self._need(NANO.umt5, "text"))
        return self._cache["text"]

    def dit(self, name: str, stage: str) -> WanDiT:
        return load_dit(self._need(name, stage)).model.float()

    def text_table(self) -> TextTable:
        if "table" not in self._cache:
            loaded = self.text()
            self._cache["table"] = text_table(loaded.model, loaded.tokenizer)
        return self._cache["table"]

    def latents(self, task: str = "t2v") -> LatentSet:
        """The encoded training clips of ``task``, cached in ``work`` (rebuilt when the VAE or text
        file changed): ``"t2v"`` (also VACE's) on centred paths, ``"i2v"`` on paths anywhere in the
        frame with each clip's I2V first-frame condition."""
        spec = LATENT_SETS.get(task)
        if spec is None:
            raise ValueError(f"train-nano: no latent set for task {task!r}; expected one of {list(LATENT_SETS)}")
        cache_key = f"latents:{task}"
        if cache_key in self._cache:
            return self._cache[cache_key]
        path, stamp = self.work / f"{spec.stem}.pt", self.work / f"{spec.stem}.stamp"
        key = self._latents_key(task)
        if path.exists() and stamp.exists() and stamp.read_text() == key:
            data = LatentSet.load(path)
        else:
            clips = clip_set(self.seed + 100, self.clips_per_scene, self.scenes, placement=spec.placement)
            data = encode_clip_set(self.vae(), clips, self.text_table(), quiet=self.quiet)
            if spec.with_i2v:
                add_i2v_condition(data, self.vae(), clips, quiet=self.quiet)
            self.work.mkdir(parents=True, exist_ok=True)
            data.save(path)
            stamp.write_text(key)
        self._cache[cache_key] = data
        return data

    def _latents_key(self, task: str) -> str:
        """What the cached latents depend on: the VAE and text files' contents and the clip set."""
        digest = hashlib.sha256()
        for name, stage in ((NANO.vae, "vae"), (NANO.umt5, "text")):
            digest.update(self._need(name, stage).read_bytes())
        digest.update(f"{task} {self.seed} {self.clips_per_scene} {self.scenes}".encode())
        return digest.hexdigest()

    def _need(self, name: str, stage: str) -> Path:
        path = self.file(name)
        if not path.exists():
            raise FileNotFoundError(f"train-nano: {path} is missing; run the '{stage}' stage first "
                                    f"(wanflow train-nano --stage {stage})")
        return path


def stage_vae(ctx: StageContext) -> None:
    vae = train_vae(ctx.work / "vae", ctx.seed, ctx.loops.get("vae"), quiet=ctx.quiet)
    polish_decoder(vae, ctx.work / "vae_decoder", ctx.seed, ctx.loops.get("vae_decoder"), quiet=ctx.quiet)
    fit_latent(vae, ctx.seed, ctx.fit_clips, quiet=ctx.quiet)
    harden_decoder(vae, ctx.work / "vae_decoder_hardened", ctx.seed + 1000, ctx.loops.get("vae_decoder"),
                   quiet=ctx.quiet)
    rescale_decoder(vae, ctx.work / "vae_decoder_rescaled", ctx.seed + 2000, ctx.loops.get("vae_decoder"),
                    quiet=ctx.quiet)
    save_vae(vae, ctx.file(NANO.vae))


def stage_text(ctx: StageContext) -> None:
    save_tensors(ctx.file(NANO.umt5), text_encoder_file(ctx.seed), {"wanflow_nano": "umt5"})


def stage_t2v(ctx: StageContext) -> None:
    data, table = ctx.latents(), ctx.text_table()
    base = nano_dit.t2v_base(ctx.work, data, table, ctx.seed + 300, ctx.loops.get("t2v_base"), quiet=ctx.quiet)
    pair = nano_dit.train_t2v_experts(base, ctx.work, data, table, ctx.seed + 400, ctx.loops.get("expert"),
                                      quiet=ctx.quiet)
    pair = nano_dit.sharpen_unconditional(pair, ctx.work, data, table, ctx.seed + 77, ctx.loops.get("uncond"),
                                          quiet=ctx.quiet)
    save_dit(pair["high"], ctx.file(NANO.t2v_high), "t2v high-noise expert")
    save_dit(pair["low"], ctx.file(NANO.t2v_low), "t2v low-noise expert")


def stage_i2v(ctx: StageContext) -> None:
    data, table = ctx.latents("i2v"), ctx.text_table()
    starts = {"high": ctx.dit(NANO.t2v_high, "t2v"), "low": ctx.dit(NANO.t2v_low, "t2v")}
    pair = nano_dit.train_i2v_experts(starts, ctx.work, data, table, ctx.seed + 500, ctx.loops.get("expert"),
                                      quiet=ctx.quiet)
    save_dit(pair["high"], ctx.file(NANO.i2v_high), "i2v high-noise expert")
    save_dit(pair["low"], ctx.file(NANO.i2v_low), "i2v low-noise expert")
    # then the first-frame polish, from the files just written (as the demo will load them)
    for offset, expert in enumerate(nano_dit.experts("i2v")):
        name = NANO.i2v_high if expert.name == "high" else NANO.i2v_low
        model = nano_dit.polish_first_frame(ctx.dit(name, "i2v"), expert, ctx.work, data, table,
                                            ctx.seed + 900 + offset, ctx.loops.get("expert"), quiet=ctx.quiet)
        save_dit(model, ctx.file(name), f"i2v {expert.name}-noise expert")


def stage_vace(ctx: StageContext) -> None:
    model = nano_vace.train_vace(ctx.dit(NANO.t2v_low, "t2v"), ctx.vae(), ctx.work, ctx.latents(), ctx.text_table(),
                                 ctx.seed + 600, ctx.loops.get("vace"), quiet=ctx.quiet)
    save_dit(model, ctx.file(NANO.vace), "vace reference-to-video")
    # then the first-frame polish, from the file just written (as the demo will load it)
    model = nano_vace.polish_vace_first_frame(ctx.dit(NANO.vace, "vace"), ctx.vae(), ctx.work, ctx.latents(),
                                              ctx.text_table(), ctx.seed + 1600, ctx.loops.get("vace"),
                                              quiet=ctx.quiet)
    save_dit(model, ctx.file(NANO.vace), "vace reference-to-video")


def stage_loras(ctx: StageContext) -> None:
    experts = {"high": ctx.dit(NANO.t2v_high, "t2v"), "low": ctx.dit(NANO.t2v_low, "t2v")}
    per_scene = min(ctx.clips_per_scene, nano_loras.CLIPS_PER_SCENE)
    for offset, style in enumerate(LORA_STYLES):
        trained = nano_loras.train_style(style, experts, ctx.vae(), ctx.text_table(), ctx.work,
                                         ctx.seed + 700 + 10 * offset, ctx.loops.get("lora"), per_scene,
                                         ctx.scenes, quiet=ctx.quiet)
        save_pair(trained, ctx.out / "loras" / f"{NANO.lora_stem(style)}.safetensors",
                  {"high": NANO.t2v_high, "low": NANO.t2v_low}, overwrite=True)


STAGES: dict[str, Callable[[StageContext], None]] = {
    "vae": stage_vae,
    "text": stage_text,
    "t2v": stage_t2v,
    "i2v": stage_i2v,
    "vace": stage_vace,
    "loras": stage_loras,
}


STAGE_RUNS = {"vae": ("vae", "vae_decoder", "vae_decoder_hardened",
                      "vae_decoder_rescaled/clips", "vae_decoder_rescaled/frames"), "text": (),
              "t2v": ("t2v_base", "t2v_high", "t2v_low", "t2v_high_uncond", "t2v_low_uncond"),
              "i2v": ("i2v_high", "i2v_low", "i2v_high_first_frame", "i2v_low_first_frame"),
              "vace": ("vace", "vace_first_frame"),
              "loras": tuple(f"lora_{style}/{expert}" for style in LORA_STYLES for expert in ("high", "low"))}
"""The training runs (folders in ``work``) of each stage."""


def keep_loss_logs(stage: str, ctx: StageContext) -> None:
    """Copy a finished stage's loss logs next to the models (``training_logs/<run>.csv``), so the
    curves of the shipped files stay with them."""
    logs = ctx.out.parent / "training_logs"
    for run in STAGE_RUNS[stage]:
        source = ctx.work / run / "loss.csv"
        if source.exists():
            logs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, logs / f"{run.replace('/', '_')}.csv")


def run(stages: list[str], ctx: StageContext) -> dict[str, float]:
    """Run ``stages`` in order; returns the seconds each took."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"train-nano: unknown stage(s) {unknown}; expected some of {list(STAGES)}")
    timings = {}
    for name in stages:
        began = time.time()
        log.info("train-nano: stage %s", name)
        STAGES[name](ctx)
        keep_loss_logs(name, ctx)
        timings[name] = time.time() - began
        log.info("train-nano: stage %s done in %.0f s", name, timings[name])
    return timings
