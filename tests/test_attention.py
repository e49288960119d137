"""Attention back-ends: selection, clear errors for missing packages, key lengths, fallbacks, the fp8
quantization arithmetic, and each installed optional kernel against SDPA (CUDA only)."""
import logging

import pytest
import torch
import torch.nn.functional as F

from wanflow.wan import attention as A
from wanflow.wan import attention_kernels as K

# Each backend against float32 SDPA on the same (half-precision) inputs. Exact kernels are held to
# half-precision rounding; the quantized ones (8-bit QK for sage, fp8 q/k/v for sdpa_fp8) to a
# relative L1 error and a cosine similarity, as their authors report accuracy.
EXACT_MAX_ABS = 2e-2                       # sdpa and flash in bf16/fp16
QUANTIZED = {"sage": (0.05, 0.995),        # relative L1 ≤, cosine ≥
             "sdpa_fp8": (0.10, 0.99)}

OPTIONAL = {"flash": ("flash_attn", "pip install flash-attn"),
            "sage": ("sageattention", "pip install sageattention"),
            "sdpa_fp8": ("flash_attn_interface", "FlashAttention 3")}


def qkv(batch=2, q_len=64, k_len=80, heads=4, head_dim=64, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((batch, q_len, heads, head_dim), (batch, k_len, heads, head_dim), (batch, k_len, heads, head_dim))
    return [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]


def rel_l1(out, ref):
    return ((out.float() - ref.float()).abs().mean() / ref.float().abs().mean()).item()


def cosine(out, ref):
    return F.cosine_similarity(out.float().flatten(), ref.float().flatten(), dim=0).item()


def test_every_backend_is_listed_and_sdpa_runs_everywhere():
    assert A.backend_names()[0] == "sdpa"
    assert set(OPTIONAL) <= set(A.backend_names())
    assert "sdpa" in A.available_backends()
    assert A.backend_problem("sdpa") is None
    assert "unknown" in A.backend_problem("nope") and "sdpa_fp8" in A.backend_problem("nope")
    assert "unknown" in A.backend_problem(["2", 0]) and "unknown" in A.backend_problem({"a": 1})  # JSON of the wrong type


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_a_backend_that_cannot_run_names_its_package_and_is_refused(name):
    problem = A.backend_problem(name)
    if problem is None:
        pytest.skip(f"{name} can run on this machine")
    module, install = OPTIONAL[name]
    assert module in problem and install in problem, problem
    with pytest.raises(A.AttentionBackendError, match=module):
        A.set_backend(name)
    assert A.get_backend() == "sdpa"
    with pytest.raises(A.AttentionBackendError, match=module):
        with A.backend_for(torch.nn.Identity(), name):
            pass


def test_key_lengths_per_sample_match_the_masked_sdpa():
    q, k, v = qkv(k_len=80)
    lens = torch.tensor([37, 80])
    expected = A.sdpa_attention(q, k, v, lens)
    calls = []

    def kernel(q_, k_, v_):  # no mask, like flash/sage/fp8: only the keys it is given
        calls.append(k_.shape[1])
        return F.scaled_dot_product_attention(q_.transpose(1, 2), k_.transpose(1, 2), v_.transpose(1, 2)).transpose(1, 2)

    got = K.per_sample_keys(kernel, q, k, v, lens)
    assert calls == [37, 80]
    assert (got - expected).abs().max().item() <= 1e-5
    calls.clear()
    K.per_sample_keys(kernel, q, k, v, torch.tensor([80, 80]))
    assert calls == [80]  # nothing padded: one call for the batch
    # and the padding really is ignored: garbage past each length changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[0, 37:], v2[0, 37:] = 1e3, -1e3
    assert (A.sdpa_attention(q, k2, v2, lens) - expected).abs().max().item() <= 1e-5


def test_an_optional_backend_runs_calls_it_cannot_take_through_sdpa(caplog):
    q, k, v = qkv(head_dim=384)  # CPU float32, and the VAE's head size
    lens = torch.tensor([50, 80])
    fn = A.with_fallback("test-fallback", lambda *a: pytest.fail("kernel called"), K.flash_supports)
    with caplog.at_level(logging.INFO, logger="wanflow"):
        for _ in range(2):
            assert torch.equal(fn(q, k, v, lens), A.sdpa_attention(q, k, v, lens))
    notes = [r.message for r in caplog.records if "test-fallback" in r.message]
    assert len(notes) == 1 and "head_dim 384" in notes[0]
    assert "float32" in K.flash_supports(*qkv(head_dim=128))
    half = [t.bfloat16() for t in qkv(head_dim=128)]
    assert K.flash_supports(*half) == K.sage_supports(*half) == K.sdpa_fp8_supports(*half) == "tensors on cpu, not CUDA"
    assert "head_dim 80" in K.sage_supports(*qkv(head_dim=80)) and "head_dim 96" in K.sdpa_fp8_supports(*qkv(head_dim=96))


def test_fp8_quantization_per_head():
    x = torch.randn(2, 3, 40, 64) * torch.tensor([1.0, 10.0, 0.01])[None, :, None, None]
    x[1, 2] = 0  # an all-zero head
    values, descale = K.quantize_per_head(x)
    assert values.dtype == torch.float8_e4m3fn and descale.shape == (2, 3) and descale.dtype == torch.float32
    peak = values.float().abs().amax(dim=(2, 3))
    assert torch.equal(peak[descale != 1], torch.full_like(peak[descale != 1], K.FP8_ATTENTION_MAX))
    assert descale[1, 2] == 1 and not values[1, 2].float().any()
    back = values.float() * descale[:, :, None, None]
    # e4m3: 3 mantissa bits, half an ulp is 2^-4 relative; below 2^-6 (subnormals) steps of 2^-9
    bound = x.abs() * 2 ** -4 + descale[:, :, None, None] * 2 ** -10
    assert bool(((back - x).abs() <= bound * 1.0001).all())


def test_fp8_attention_arithmetic_is_within_its_tolerance():
    """The sdpa_fp8 kernel's inputs, dequantized and run through float32 SDPA, against SDPA."""
    q, k, v = qkv(q_len=256, k_len=256, head_dim=128)
    emulated = [(x8.float() * s[:, :, None, None]).transpose(1, 2)
                for x8, s in (K.quantize_per_head(t.transpose(1, 2)) for t in (q, k, v))]
    ref = A.sdpa_attention(q, k, v)
    out = A.sdpa_attention(*emulated)
    max_rel_l1, min_cos = QUANTIZED["sdpa_fp8"]
    assert rel_l1(out, ref) <= max_rel_l1 and cosine(out, ref) >= min_cos


def test_each_model_runs_with_its_own_backend(monkeypatch):
    seen = []
    for name in ("a", "b"):
        fn = (lambda tag: lambda q, k, v, k_lens=None: seen.append(tag) or A.sdpa_attention(q, k, v, k_lens))(name)
        monkeypatch.setitem(A._BACKENDS, f"test-{name}", A.Backend(f"test-{name}", fn))

    class Attend(torch.nn.Module):
        def forward(self, x):
            if x.isnan().any():
                raise RuntimeError("bad input")
            return A.attention(x, x, x)

    first, second = Attend(), Attend()
    x = torch.randn(1, 8, 2, 16)
    with A.backend_for(first, "test-a"), A.backend_for(second, "test-b"):
        first(x), second(x), first(x)
        assert A.get_backend() == "sdpa"
        with pytest.raises(RuntimeError):
            second(torch.full_like(x, float("nan")))
        assert A.get_backend() == "sdpa"  # restored after the error too
    first(x)
    assert seen == ["a", "b", "a"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["sdpa"] + sorted(OPTIONAL))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_lens", [False, True])
def test_backend_matches_float32_sdpa_on_cuda(name, dtype, with_lens):
    if A.backend_problem(name) is not None:
        pytest.skip(A.backend_problem(name))
    q, k, v = qkv(q_len=512, k_len=512, heads=8, head_dim=128, dtype=dtype, device="cuda")
    lens = torch.tensor([300, 512], device="cuda") if with_lens else None
    ref = A.sdpa_attention(q.float(), k.float(), v.float(), lens)
    with A.use_backend(name):
        out = A.attention(q, k, v, lens)
    assert out.dtype == dtype and out.shape == q.shape
    if name in QUANTIZED:
        max_rel_l1, min_cos = QUANTIZED[name]
        assert rel_l1(out, ref) <= max_rel_l1 and cosine(out, ref) >= min_cos
    else:
        assert (out.float() - ref).abs().max().item() <= EXACT_MAX_ABS
