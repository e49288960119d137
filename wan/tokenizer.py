"""umT5 tokenizer (SentencePiece) and the official Wan prompt cleaning.

Official Wan runs the HF ``google/umt5-xxl`` tokenizer with EOS appended, padding to 512 and
truncation at 512; :class:`UMT5Tokenizer` reproduces that with the ``sentencepiece`` library
alone. The SentencePiece model comes from a ``spiece.model`` file or from raw bytes: ComfyUI's
umT5 text-encoder files embed it as a uint8 tensor under the key ``spiece_model``, which can be
passed here directly.

Known difference from HF: literal special-token text inside a prompt (``</s>``, ``<pad>``) is
tokenized as plain characters here, whereas HF maps it to the special id.
"""
from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from typing import Sequence, Union

import ftfy
import sentencepiece
import torch

SpieceSource = Union[str, os.PathLike, bytes, bytearray, torch.Tensor]

_WHITESPACE = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Official Wan prompt cleaning: fix mojibake, unescape HTML (twice), collapse whitespace."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text.strip()).strip()


@dataclass
class TokenizedPrompts:
    """``ids`` and ``mask`` are int64 ``[batch, max_length]``; mask is 1 for tokens and EOS."""

    ids: torch.Tensor
    mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)


def _spiece_bytes(source: SpieceSource) -> bytes:
    """The serialized SentencePiece model from a path, bytes or a ComfyUI uint8 tensor."""
    if isinstance(source, torch.Tensor):
        if source.dtype != torch.uint8 or source.ndim != 1:
            raise ValueError(f"spiece_model tensor must be 1-D uint8 bytes, got "
                             f"{tuple(source.shape)} {source.dtype}")
        return source.cpu().numpy().tobytes()
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SentencePiece model file not found: {path}")
    with open(path, "rb") as f:
        return f.read()


class UMT5Tokenizer:
    """Prompts -> ``TokenizedPrompts`` (cleaned, EOS appended, truncated and padded)."""

    def __init__(self, source: SpieceSource, max_length: int = 512, clean: bool = True) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        data = _spiece_bytes(source)
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(data)
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError with C++ text
            where = source if isinstance(source, (str, os.PathLike)) else f"{len(data)} bytes"
            raise ValueError(f"not a SentencePiece model ({where}): {exc}") from exc
        if self.sp.eos_id() < 0:
            raise ValueError("SentencePiece model has no EOS piece; umT5 needs one (</s>, id 1)")
        self.max_length = max_length
        self.clean = clean
        self.eos_id = self.sp.eos_id()
        self.pad_id = max(self.sp.pad_id(), 0)  # umT5: <pad> = 0

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt with EOS, truncated to ``max_length`` (EOS kept), unpadded."""
        if self.clean:
            prompt = clean_prompt(prompt)
        ids = self.sp.encode(prompt)[: self.max_length - 1]
        return ids + [self.eos_id]

    def __call__(self, prompts: Union[str, Sequence[str]]) -> TokenizedPrompts:
        if isinstance(prompts, str):
            prompts = [prompts]
        batch = len(prompts)
        ids = torch.full((batch, self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, self.max_length), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompt {i} must be a str, got {type(prompt).__name__}")
            tokens = self.encode(prompt)
            ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[i, : len(tokens)] = 1
        return TokenizedPrompts(ids=ids, mask=mask)
