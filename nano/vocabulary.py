"""The WanNano world: one coloured shape moving over a plain background, and its captions.

The vocabulary and the caption template are a contract: the README, ``wanflow demo``, the
training recipes and the semantic tests all use them. Change them only together with the models.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 190, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 210, 30),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
"""Unit steps in image axes (x to the right, y downwards)."""
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
SPEEDS: dict[str, float] = {"normal": 1.5, "slowly": 0.75}
"""Pixels per frame at 64x64; the slow speed is named in the caption as "slowly"."""

NIGHT_BACKGROUND = (20, 28, 90)
"""The dark blue the ``night`` style LoRA paints instead of the asked background."""

TEMPLATE = "a {colour} {shape} moving {direction} on a {background} background"
SLOW_TEMPLATE = "a {colour} {shape} moving slowly {direction} on a {background} background"

WIDTH = HEIGHT = 64
FRAMES = 17
FPS = 16


@dataclass(frozen=True)
class Scene:
    """What a caption says: the object, its motion and the background."""

    colour: str
    shape: str
    direction: str
    background: str
    speed: str = "normal"

    @property
    def combination(self) -> tuple[str, str, str, str]:
        return (self.colour, self.shape, self.direction, self.background)

    @property
    def caption(self) -> str:
        template = SLOW_TEMPLATE if self.speed == "slowly" else TEMPLATE
        return template.format(colour=self.colour, shape=self.shape, direction=self.direction,
                               background=self.background)


HELD_OUT: frozenset[tuple[str, str, str, str]] = frozenset({
    ("red", "circle", "up", "black"),
    ("green", "square", "left", "white"),
    ("blue", "triangle", "down", "black"),
    ("yellow", "circle", "right", "white"),
    ("red", "triangle", "left", "white"),
    ("green", "circle", "down", "black"),
    ("blue", "square", "right", "white"),
    ("yellow", "triangle", "up", "black"),
    ("blue", "square", "up", "black"),
    ("yellow", "square", "down", "white"),
})
"""(colour, shape, direction, background) combinations never shown in training, at either speed:
the semantic tests measure generalisation on them. Every colour, shape, direction and background
is still seen in other combinations."""


def all_scenes() -> list[Scene]:
    """Every scene of the world (4 colours x 3 shapes x 4 directions x 2 backgrounds x 2 speeds)."""
    return [Scene(c, s, d, b, v) for c, s, d, b, v in
            itertools.product(COLOURS, SHAPES, DIRECTIONS, BACKGROUNDS, SPEEDS)]


def training_scenes() -> list[Scene]:
    return [scene for scene in all_scenes() if scene.combination not in HELD_OUT]


def held_out_scenes() -> list[Scene]:
    return [scene for scene in all_scenes() if scene.combination in HELD_OUT]


EVAL_SCENES: tuple[Scene, ...] = (
    *[s for s in held_out_scenes() if s.speed == "normal"][:6],
    *training_scenes()[5::29][:6],
)
"""The 12 T2V evaluation prompts: 6 held-out combinations (never seen in training), both speeds."""


_KNOWN_WORDS = frozenset(itertools.chain(
    COLOURS, SHAPES, DIRECTIONS, BACKGROUNDS, ("a", "moving", "on", "background", "slowly")))


def vocabulary() -> list[str]:
    """Every word the nano models were trained on, sorted."""
    return sorted(_KNOWN_WORDS)


def unknown_words(prompt: str) -> list[str]:
    """Words of ``prompt`` outside the nano vocabulary (the models ignore or misread them)."""
    words = re.findall(r"[a-z]+", prompt.lower())
    return [w for w in dict.fromkeys(words) if w not in _KNOWN_WORDS]


def parse_caption(prompt: str) -> Scene:
    """The scene a caption of the template describes; ValueError naming what is missing."""
    words = re.findall(r"[a-z]+", prompt.lower())

    def pick(kind: str, options) -> str:
        found = [w for w in words if w in options]
        if len(found) < 1:
            raise ValueError(f"caption {prompt!r} names no {kind}; expected one of {sorted(options)}")
        return found[0]

    colour = pick("colour", COLOURS)
    shape = pick("shape", SHAPES)
    direction = pick("direction", DIRECTIONS)
    background = pick("background", BACKGROUNDS)
    return Scene(colour, shape, direction, background, "slowly" if "slowly" in words else "normal")
