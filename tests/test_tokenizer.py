"""umT5 tokenizer wrapper vs transformers' T5Tokenizer on a tiny SentencePiece model; prompt cleaning."""
from __future__ import annotations

import random

import pytest
import sentencepiece
import torch

from wanflow.wan.tokenizer import UMT5Tokenizer, clean_prompt

transformers = pytest.importorskip("transformers")

MAX_LEN = 24
WORDS = ("the quick brown fox jumps over lazy dog a cat sits on mat watching rain fall café crème "
         "brûlée naïve façade 東京 タワー video of dancer spinning under neon lights at night camera "
         "pans slowly across mountain river forest snow golden hour cinematic close-up portrait "
         "smiling woman man child running beach waves sunset").split()
PROMPTS = [
    "A cat sits on the mat, watching the rain fall.",
    "  the   quick\tbrown fox \n jumps ",
    "Café crème brûlée at golden hour 東京 タワー",
    "ＦＵＬＬＷＩＤＴＨ letters and ① circled digits",  # NFKC normalisation
    "unseen glyphs ΩΩ ж and the dog",  # characters outside the vocabulary -> <unk>
    "",
    " ".join(["a long prompt that will be truncated"] * 6),
]


def _field(data: bytes, wanted: int) -> bytes | None:
    """First length-delimited protobuf field ``wanted`` of a message (enough to read a .model)."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size = varint()
            if number == wanted:
                return data[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return None


@pytest.fixture(scope="module")
def spiece(tmp_path_factory) -> bytes:
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
                 + rng.choice([".", "!", ",", "?", ""]) for _ in range(400)]
    path = tmp_path_factory.mktemp("spm") / "tiny"
    # T5 layout: <pad>=0, </s>=1, <unk>=2, no BOS
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(path), vocab_size=150,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2)
    return (path.parent / "tiny.model").read_bytes()


@pytest.fixture(scope="module")
def hf_tokenizer(spiece):
    """transformers' (tokenizers-backed) T5Tokenizer built from the same SentencePiece model."""
    sp = sentencepiece.SentencePieceProcessor(model_proto=spiece)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    normalizer = _field(spiece, 3)  # ModelProto.normalizer_spec
    charsmap = _field(normalizer, 2)  # NormalizerSpec.precompiled_charsmap
    assert charsmap, "trained model should carry an NFKC charsmap"
    return transformers.T5Tokenizer(vocab=vocab, _spm_precompiled_charsmap=charsmap, extra_ids=0)


def _reference(hf_tokenizer, prompts):
    cleaned = [clean_prompt(p) for p in prompts]
    out = hf_tokenizer(cleaned, padding="max_length", truncation=True, max_length=MAX_LEN,
                       add_special_tokens=True, return_tensors="pt")
    return out["input_ids"], out["attention_mask"]


def test_ids_and_mask_match_transformers(spiece, hf_tokenizer):
    ours = UMT5Tokenizer(spiece, max_length=MAX_LEN)
    tokens = ours(PROMPTS)
    ids, mask = _reference(hf_tokenizer, PROMPTS)
    assert tokens.ids.shape == (len(PROMPTS), MAX_LEN) and tokens.ids.dtype == torch.long
    assert torch.equal(tokens.ids, ids)
    assert torch.equal(tokens.mask, mask)
    # EOS ends every prompt (also the truncated one and the empty one), pad id 0 after it
    lengths = tokens.lengths.tolist()
    assert lengths[-1] == MAX_LEN and lengths[PROMPTS.index("")] == 1
    for row, n in zip(tokens.ids.tolist(), lengths):
        assert row[n - 1] == 1 and all(t == 0 for t in row[n:])
    assert (tokens.ids == 2).any(), "the unseen-glyph prompt should exercise <unk>"


def test_sources_path_bytes_and_comfy_tensor(spiece, tmp_path):
    path = tmp_path / "spiece.model"
    path.write_bytes(spiece)
    as_tensor = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)  # ComfyUI 'spiece_model'
    results = [UMT5Tokenizer(src, max_length=MAX_LEN)(PROMPTS[:3]) for src in
               (spiece, str(path), path, as_tensor)]
    for r in results[1:]:
        assert torch.equal(r.ids, results[0].ids) and torch.equal(r.mask, results[0].mask)
    single = UMT5Tokenizer(spiece, max_length=MAX_LEN)(PROMPTS[0])
    assert torch.equal(single.ids, results[0].ids[:1])


def test_cleaning_is_applied_by_default(spiece):
    tok = UMT5Tokenizer(spiece, max_length=MAX_LEN)
    raw = UMT5Tokenizer(spiece, max_length=MAX_LEN, clean=False)
    messy = "the &amp;amp; dog"
    assert tok.encode(messy) == raw.encode("the & dog")
    assert tok.encode(messy) != raw.encode(messy)


def test_bad_sources_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        UMT5Tokenizer(tmp_path / "missing.model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        UMT5Tokenizer(b"definitely not a model")
    with pytest.raises(ValueError, match="uint8"):
        UMT5Tokenizer(torch.zeros(8, dtype=torch.float32))


def test_bad_prompts_and_lengths(spiece):
    with pytest.raises(ValueError, match="max_length"):
        UMT5Tokenizer(spiece, max_length=0)
    with pytest.raises(TypeError, match="prompt 1"):
        UMT5Tokenizer(spiece)(["ok", 3])


@pytest.mark.parametrize("raw, cleaned", [
    ("A &amp;amp; B", "A & B"),  # double-escaped HTML entity: unescaped twice
    ("&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b>"),
    ("cafÃ© au lait", "café au lait"),  # UTF-8 read as Latin-1 (mojibake)
    ("âœ” done", "✔ done"),
    ("  many \t\n  spaces\u3000here  ", "many spaces here"),
    ("\u201cquotes\u201d and\u00a0nbsp", "\"quotes\" and nbsp"),  # ftfy straightens quotes
    ("", ""),
])
def test_clean_prompt(raw, cleaned):
    assert clean_prompt(raw) == cleaned


def test_encode_prompts_end_to_end(spiece):
    from wanflow.wan.umt5 import UMT5Config, UMT5Encoder, encode_prompts, text_context

    tok = UMT5Tokenizer(spiece, max_length=MAX_LEN)
    cfg = UMT5Config(vocab_size=tok.vocab_size, dim=16, num_heads=2, head_dim=8, ffn_dim=24,
                     num_layers=2, num_buckets=8, max_distance=16, text_len=MAX_LEN)
    torch.manual_seed(0)
    encoder = UMT5Encoder(cfg).eval()
    with torch.no_grad():
        for p in encoder.parameters():
            p.normal_()
    prompts = PROMPTS[:3]
    context = encode_prompts(encoder, tok, prompts)
    tokens = tok(prompts)
    assert context.shape == (3, MAX_LEN, 16)
    assert torch.equal(context, text_context(encoder, tokens.ids, tokens.mask))
    for row, n in zip(context, tokens.lengths.tolist()):
        assert torch.count_nonzero(row[n:]) == 0 and torch.count_nonzero(row[:n]) == n * 16
