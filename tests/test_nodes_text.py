"""Text encode node on a tiny umT5 with a tiny SentencePiece model: contexts, caching."""
import random

import pytest
import sentencepiece
import torch

from wanflow.nodes.handles import TextEncoderHandle
from wanflow.nodes.text_nodes import OFFICIAL_NEGATIVE_PROMPT, WanFlowTextEncode, prompt_cache
from wanflow.wan.tokenizer import UMT5Tokenizer
from wanflow.wan.umt5 import UMT5Config, UMT5Encoder, encode_prompts

WORDS = "a cat dog runs on the beach under sunset light slowly camera pans city rain".split()


@pytest.fixture(scope="module")
def handle(tmp_path_factory):
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(200)]
    prefix = tmp_path_factory.mktemp("spm") / "tiny"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(prefix), vocab_size=60, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    tokenizer = UMT5Tokenizer(str(prefix) + ".model")
    torch.manual_seed(0)
    encoder = UMT5Encoder(UMT5Config(vocab_size=tokenizer.vocab_size, dim=16, num_heads=2, head_dim=8,
                                     ffn_dim=32, num_layers=2)).eval()
    return TextEncoderHandle(encoder, tokenizer, on_cpu=True)


def test_encode_matches_layer_and_caches(handle):
    (cond,) = WanFlowTextEncode().encode(handle, "a cat runs on the beach", "rain")
    expected = encode_prompts(handle.encoder, handle.tokenizer, ["a cat runs on the beach", "rain"])
    assert cond.context.shape == (1, 512, 16)
    torch.testing.assert_close(cond.context[0], expected[0])
    torch.testing.assert_close(cond.negative_context[0], expected[1])
    calls = []
    hook = handle.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        (again,) = WanFlowTextEncode().encode(handle, "a cat runs on the beach", "rain")
        assert calls == [] and again.context is cond.context  # served from the cache
        WanFlowTextEncode().encode(handle, "a dog", "rain")
        assert calls == [1]  # only the new prompt was encoded
    finally:
        hook.remove()


def test_cache_evicts_oldest_and_forgets_dead_encoders():
    from wanflow.nodes.text_nodes import PromptCache

    cache = PromptCache(size=2)
    owner = torch.nn.Linear(1, 1)
    for prompt in ("a", "b", "c"):
        cache.put(owner, prompt, torch.zeros(1))
    assert cache.get(owner, "a") is None and cache.get(owner, "c") is not None
    del owner
    import gc

    gc.collect()
    assert not cache.entries
    assert "手指融合" in OFFICIAL_NEGATIVE_PROMPT
