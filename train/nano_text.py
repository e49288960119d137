"""Stage ``text``: the WanNano tokenizer and text encoder.

The tokenizer is a SentencePiece BPE model trained on every caption of the world and the
alphabet, with umT5's special ids and case folding: each vocabulary word is one token, any other
word falls apart into letters. The encoder
is a 2-layer umT5 with frozen random weights: the DiT's text embedding and cross-attention learn
to read it. Its attention and feed-forward outputs are scaled down so each token's state stays
close to its own embedding (words stay distinguishable) while position bias still mixes a little
context in. Both are stored the way ComfyUI stores umT5 (HF keys, ``spiece_model`` tensor).
"""
from __future__ import annotations

import io
import string

import sentencepiece
import torch

from ..model_loaders import umt5_keys
from ..nano.vocabulary import all_scenes
from ..wan.tokenizer import UMT5Tokenizer
from ..wan.umt5 import UMT5Config, UMT5Encoder

TEXT_DIM = 64
ENCODER_SHAPE = dict(dim=TEXT_DIM, num_heads=2, head_dim=32, ffn_dim=128, num_layers=2)
OUTPUT_SCALE = 0.2


def train_tokenizer(seed: int) -> bytes:
    """A serialized SentencePiece model with <pad>=0, </s>=1, <unk>=2 (umT5's ids)."""
    sentences = [scene.caption for scene in all_scenes()]
    sentences.append(" ".join(string.ascii_lowercase + string.digits + ".,!?-"))
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=128, model_type="bpe",
        normalization_rule_name="nmt_nfkc_cf",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
    return model.getvalue()


def build_text_encoder(vocab_size: int, seed: int) -> UMT5Encoder:
    torch.manual_seed(seed)
    encoder = UMT5Encoder(UMT5Config(vocab_size=vocab_size, **ENCODER_SHAPE))
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if name.endswith((".o.weight", "fc2.weight")):
                param.mul_(OUTPUT_SCALE)
    return encoder.eval().requires_grad_(False)


def text_encoder_file(seed: int) -> dict[str, torch.Tensor]:
    """The text-encoder file's tensors (HF keys + embedded tokenizer), from a seed."""
    spiece = train_tokenizer(seed)
    encoder = build_text_encoder(UMT5Tokenizer(spiece).vocab_size, seed)
    tensors = umt5_keys.official_to_hf(encoder.state_dict())
    tensors["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    return tensors
