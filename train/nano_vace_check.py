"""Does the nano VACE model take the object from its references? (a check for the ``vace`` stage)

The R2V videos often show the prompt's colour, or a red object, instead of the reference's. This
tells a model that ignores its references from one that uses them but loses them while sampling:
training-style clips are scored with the flow-matching loss on their video frames, once with
references of the clip's own object and once with references of another colour, and once with
the true captions and once with random colour and shape words. A model that reads its references
pays for wrong ones; one that reads the words pays for random ones.

For generation 3 (24 clips): right references 0.29/0.26/0.21/0.23/0.39 at σ 0.95/0.8/0.6/0.4/0.2,
wrong ones 0.35/0.33/0.26/0.28/0.43, random words +0.001-0.005: the model uses its references,
and the colour is lost in sampling (docs/nano_findings.md). With the VACE hints switched off, wrong
references cost nothing (within 0.012).

``python -m wanflow.train.nano_vace_check [VACE_FILE]`` prints one line per noise level.
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..model_loaders.dit_loader import load_dit
from ..model_loaders.text_encoder_loader import load_text_encoder
from ..model_loaders.vae_loader import load_vae
from ..nano.files import MODELS_DIR, NANO
from ..nano.vocabulary import COLOURS, FRAMES, HEIGHT, WIDTH
from ..wan.dit import WanDiT
from .flow_matching import velocity_error
from .nano_latents import TextTable, scoring_clips, text_table
from .nano_vace import mislabelled_caption, reference_bank, vace_context, video_part

SIGMAS = (0.95, 0.8, 0.6, 0.4, 0.2)
REFERENCE_VARIANT = 2
"""Which picture of :func:`reference_bank` to use: 28 px on grey, as the R2V tests draw them."""


@dataclass(frozen=True)
class ReferenceUse:
    """Mean flow-matching loss on the video frames (not the reference frames) at one σ."""

    sigma: float
    right: float            # references of the clip's object, true captions
    right_random_words: float
    wrong: float            # references of the same shape in another colour, true captions
    wrong_random_words: float


def reference_use(model: WanDiT, vae, table: TextTable, clips: int = 24, seed: int = 0,
                  sigmas: Sequence[float] = SIGMAS) -> list[ReferenceUse]:
    """Score ``clips`` training scenes (one clip each) with right and wrong references."""
    rng = random.Random(seed)
    scenes, data = scoring_clips(vae, table, clips, seed, rng)
    bank = reference_bank(vae)
    video = video_part(vae, FRAMES, HEIGHT, WIDTH)

    def refs(colours: list[str]) -> torch.Tensor:
        return torch.stack([bank[f"{c} {s.shape}"][REFERENCE_VARIANT][None] for c, s in zip(colours, scenes)])

    right = refs([s.colour for s in scenes])
    wrong = refs([rng.choice([c for c in COLOURS if c != s.colour]) for s in scenes])
    true_words = table.contexts[[table.index(s.caption) for s in scenes]]
    random_words = table.contexts[[table.index(mislabelled_caption(s.caption, rng)) for s in scenes]]
    rows = []
    for sigma in sigmas:
        noise = torch.randn(clips, data.latents.shape[1], data.latents.shape[2] + 1, *data.latents.shape[3:],
                            generator=torch.Generator().manual_seed(int(sigma * 1000)))

        def loss(references: torch.Tensor, context: torch.Tensor) -> float:
            x0 = torch.cat([references[:, :, :, 0].transpose(1, 2), data.latents], dim=2)
            with torch.no_grad():
                error = velocity_error(model, x0, context, torch.full((clips,), sigma), noise,
                                       vace_context=vace_context(references, video))
            return float(error[:, :, references.shape[1]:].mean())

        rows.append(ReferenceUse(sigma, loss(right, true_words), loss(right, random_words),
                                 loss(wrong, true_words), loss(wrong, random_words)))
    return rows


def load_nano_vace(root: Path = MODELS_DIR, vace_file: Path | None = None) -> tuple[WanDiT, object, TextTable]:
    """The VACE model (``vace_file`` or the shipped one), the VAE and the caption table."""
    model = load_dit(vace_file or NANO.path(NANO.vace, root)).model.float().eval()
    model.collapse_text_padding = True
    vae = load_vae(NANO.path(NANO.vae, root)).model.float().eval()
    text = load_text_encoder(NANO.path(NANO.umt5, root))
    return model, vae, text_table(text.model, text.tokenizer)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="does the nano VACE model use its references?")
    parser.add_argument("vace_file", nargs="?", type=Path, help="a VACE file (default: the shipped one)")
    args = parser.parse_args(argv)
    for row in reference_use(*load_nano_vace(vace_file=args.vace_file)):
        print(f"sigma {row.sigma:.2f}: right references {row.right:.4f} (random words {row.right_random_words:.4f}); "
              f"wrong references {row.wrong:.4f} (random words {row.wrong_random_words:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
