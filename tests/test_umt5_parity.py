"""umT5 encoder: parity with transformers' UMT5EncoderModel, key maps, DiT context, meta loading."""
from __future__ import annotations

import pytest
import torch

from wanflow.model_loaders import umt5_keys
from wanflow.wan.umt5 import (UMT5Config, UMT5Encoder, fp16_clamp, prompt_lengths,
                              relative_position_bucket, text_context)

transformers = pytest.importorskip("transformers")

# small buckets / distance so 20-token prompts reach the log-spaced and the saturated buckets
TINY = UMT5Config(vocab_size=97, dim=32, num_heads=4, head_dim=8, ffn_dim=48, num_layers=3,
                  num_buckets=8, max_distance=12, text_len=24)
LENGTHS = (20, 7)


def _hf_model(cfg: UMT5Config):
    hf_cfg = transformers.UMT5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.ffn_dim,
        num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_distance, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, layer_norm_epsilon=cfg.eps)
    torch.manual_seed(0)
    model = transformers.UMT5EncoderModel(hf_cfg).eval()
    with torch.no_grad():  # HF init is tiny; make every weight matter
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.5 if "relative" in name else p.shape[-1] ** -0.5))
    return model


def _batch(cfg: UMT5Config, lengths=LENGTHS, pad_to: int | None = None):
    pad_to = pad_to or max(lengths)
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, : n - 1] = torch.randint(3, cfg.vocab_size, (n - 1,), generator=g)
        ids[i, n - 1] = 1  # EOS
        mask[i, :n] = 1
    return ids, mask


@pytest.fixture(scope="module")
def models():
    hf = _hf_model(TINY)
    ours = UMT5Encoder(TINY).eval()
    ours.load_state_dict(umt5_keys.hf_to_official(hf.state_dict()), strict=True)
    return hf, ours


def test_matches_transformers_umt5(models):
    hf, ours = models
    ids, mask = _batch(TINY)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    assert got.shape == (2, max(LENGTHS), TINY.dim)
    assert (got - expected).abs().max().item() <= 1e-4
    # the bias actually matters: without the mask the short prompt changes
    with torch.no_grad():
        unmasked = ours(ids, None)
    assert (unmasked[1, :7] - got[1, :7]).abs().max().item() > 1e-3


def test_text_context_trims_and_zero_pads(models):
    hf, ours = models
    ids, mask = _batch(TINY, pad_to=TINY.text_len)
    context = text_context(ours, ids, mask)
    assert context.shape == (2, TINY.text_len, TINY.dim) and context.dtype == torch.float32
    with torch.no_grad():
        full = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    for i, n in enumerate(LENGTHS):
        assert (context[i, :n] - full[i, :n]).abs().max().item() <= 1e-4
        assert torch.count_nonzero(context[i, n:]) == 0


def test_text_context_rejects_bad_masks(models):
    _, ours = models
    ids, mask = _batch(TINY)
    holey = mask.clone()
    holey[0, 3] = 0
    with pytest.raises(ValueError, match="right-padded"):
        text_context(ours, ids, holey)
    too_long = torch.ones(1, TINY.text_len + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="text_len"):
        text_context(ours, too_long, too_long)
    assert prompt_lengths(mask).tolist() == list(LENGTHS)


def test_relative_position_bucket_matches_transformers(models):
    hf, _ = models
    attn = hf.encoder.block[0].layer[0].SelfAttention
    rel = torch.arange(-300, 301)[None, :]
    for buckets, distance in ((8, 12), (32, 128)):
        attn.relative_attention_num_buckets, attn.relative_attention_max_distance = buckets, distance
        expected = attn._relative_position_bucket(rel)
        assert torch.equal(relative_position_bucket(rel, buckets, distance), expected)
    attn.relative_attention_num_buckets, attn.relative_attention_max_distance = 8, 12


def test_key_map_round_trip_and_extras(models):
    hf, _ = models
    hf_sd = hf.state_dict()
    official = umt5_keys.hf_to_official(hf_sd)
    assert "token_embedding.weight" in official and "blocks.2.ffn.gate.0.weight" in official
    back = umt5_keys.official_to_hf(official)
    assert set(back) == set(hf_sd) - {"encoder.embed_tokens.weight"}
    assert all(torch.equal(back[k], hf_sd[k]) for k in back)

    extras = {"spiece_model": torch.zeros(4, dtype=torch.uint8),
              "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn),
              "encoder.block.0.layer.0.SelfAttention.q.scale_weight": torch.tensor(2.0)}
    converted = umt5_keys.hf_to_official(extras)
    assert set(converted) == {"spiece_model", "scaled_fp8", "blocks.0.attn.q.scale_weight"}
    assert set(umt5_keys.official_to_hf(converted)) == set(extras)

    with pytest.raises(ValueError, match="encoder.block.0.layer.0.Bogus.weight"):
        umt5_keys.hf_to_official({"encoder.block.0.layer.0.Bogus.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="decoder.x"):
        umt5_keys.official_to_hf({"decoder.x": torch.zeros(1)})


def test_meta_construction_and_assign_load(models):
    _, ours = models
    with torch.device("meta"):
        lazy = UMT5Encoder(TINY)
    lazy.load_state_dict(ours.state_dict(), assign=True, strict=True)
    ids, mask = _batch(TINY)
    with torch.no_grad():
        assert torch.equal(lazy(ids, mask), ours(ids, mask))


def test_xxl_preset_shapes():
    cfg = UMT5Config.xxl()
    with torch.device("meta"):
        model = UMT5Encoder(cfg)
    sd = model.state_dict()
    assert len(sd) == 2 + 24 * 10
    assert sd["token_embedding.weight"].shape == (256384, 4096)
    assert sd["blocks.23.pos_embedding.embedding.weight"].shape == (32, 64)
    assert sd["blocks.0.ffn.gate.0.weight"].shape == (10240, 4096)
    assert sd["blocks.0.attn.o.weight"].shape == (4096, 4096)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - 5.68) < 0.01


def test_low_precision_and_fp8_storage(models, monkeypatch):
    _, ours = models
    ids, mask = _batch(TINY)
    with torch.no_grad():
        ref = ours(ids, mask)
        bf16 = ours(ids, mask, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert (bf16.float() - ref).abs().max().item() < 0.1 * ref.abs().max().item()

    fp8 = UMT5Encoder(TINY)
    fp8.load_state_dict({k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v
                         for k, v in ours.state_dict().items()}, assign=True)
    assert fp8.blocks[0].attn.q.weight.dtype == torch.float8_e4m3fn
    monkeypatch.setenv("WANFLOW_CPU_BF16", "1")  # a CPU with native bf16: fp8 storage computes in bf16
    with torch.no_grad():
        out = fp8(ids, mask)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    monkeypatch.setenv("WANFLOW_CPU_BF16", "0")  # AVX2 only: float32, the weights stay fp8
    with torch.no_grad():
        wide = fp8(ids, mask)
    assert wide.dtype == torch.float32 and fp8.blocks[0].attn.q.weight.dtype == torch.float8_e4m3fn
    assert (wide - out.float()).abs().max().item() < 0.1 * wide.abs().max().item()


def test_fp16_clamp():
    x = torch.tensor([float("inf"), -float("inf"), 1.0], dtype=torch.float16)
    limit = torch.finfo(torch.float16).max - 1000
    assert fp16_clamp(x).tolist() == [pytest.approx(limit, rel=1e-3),
                                      pytest.approx(-limit, rel=1e-3), 1.0]
    y = torch.tensor([float("inf")])
    assert torch.isinf(fp16_clamp(y)).all()  # only fp16 is clamped


def test_bad_inputs_are_named():
    model = UMT5Encoder(TINY)
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="mask shape"):
        model(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(ValueError, match="num_buckets"):
        UMT5Config(num_buckets=30)
