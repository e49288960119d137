"""fp8 matmuls (wan/fp8_matmul.py): when ops.Linear takes torch._scaled_mm, the activation-scale
arithmetic against the upcast path, torch's own _scaled_mm (its CPU kernel, on small layers), LoRA
adapters on top, and the real kernel on CUDA GPUs with fp8 tensor cores."""
import copy

import pytest
import torch
import torch.nn.functional as F

from wanflow.model_loaders.storage import quantize_fp8
from wanflow.wan import fp8_matmul as M
from wanflow.wan import ops
from wanflow.wan.lora import LoraStack

from lora_fixtures import default_targets, dit_inputs, make_spec, random_dit, run, write_comfyui_ab

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
# fp8 activations carry 3 mantissa bits: ~2.6 % relative L2 error of a Linear's output on random
# data (the bf16 upcast path: ~0.3 %), whichever the activation-scale granularity
MAX_REL_L2 = 0.035


def rel_l2(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def call(**changes):
    base = dict(weight_dtype=E4M3, x_dtype=torch.bfloat16, device_type="cuda", capability=(9, 0),
                in_features=1536, out_features=8960, patched=False, needs_grad=False)
    return M.Call(**{**base, **changes})


@pytest.mark.parametrize("changes, mode, expected, reason", [
    ({}, "auto", "row", "per-row"),
    ({}, "tensor", "tensor", "per-tensor"),
    ({}, "off", None, "off"),
    ({"capability": (8, 9)}, "auto", "tensor", "per-tensor"),          # Ada: per-tensor scales
    ({"capability": (8, 9)}, "row", None, "row-wise scales need"),
    ({"capability": (12, 0)}, "auto", "row", "per-row"),
    ({"capability": (8, 6)}, "auto", None, "no fp8 tensor cores"),     # Ampere
    ({"device_type": "cpu", "capability": None}, "auto", None, "device cpu"),
    ({"x_dtype": torch.float16}, "auto", "tensor", "per-tensor"),      # row-wise wants bf16 output
    ({"x_dtype": torch.float32}, "auto", "tensor", "per-tensor"),
    ({"x_dtype": torch.float64}, "auto", None, "activation is torch.float64"),
    ({"weight_dtype": E5M2}, "auto", "tensor", "per-tensor"),          # e4m3 x e5m2: per-tensor only
    ({"weight_dtype": torch.bfloat16}, "auto", None, "not fp8"),
    ({"patched": True}, "auto", None, "weight_function"),
    ({"needs_grad": True}, "auto", None, "no backward"),
    ({"in_features": 1544}, "auto", None, "multiple of 16"),
    ({"out_features": 36}, "auto", None, "multiple of 16"),
    ({"scalar_scale": False}, "auto", None, "scale_weight"),
])
def test_when_a_call_runs_as_an_fp8_matmul(changes, mode, expected, reason):
    granularity, why = M.choose(call(**changes), mode)
    assert granularity == expected and reason in why, why


def fp8_linear(in_f=64, out_f=48, dtype=E4M3, scaled=True, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layer = ops.Linear(in_f, out_f, bias=bias)
    weight, scale = quantize_fp8(torch.randn(out_f, in_f, generator=gen) * 0.05, dtype, scaled)
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    layer.set_scale_weight(scale)
    if bias:
        layer.bias = torch.nn.Parameter(torch.randn(out_f, generator=gen) * 0.1, requires_grad=False)
    return layer


def upcast(layer, x):
    """The reference: the weight dequantized to float32, one float32 matmul."""
    return F.linear(x.float(), layer.compute_weight(torch.float32), layer.compute_bias(torch.float32))


def test_describe_call_reads_the_layer_and_the_input():
    layer, x = fp8_linear(), torch.randn(5, 64, dtype=torch.bfloat16)
    seen = M.describe_call(layer, x)
    assert (seen.weight_dtype, seen.x_dtype, seen.device_type, seen.capability) == (E4M3, torch.bfloat16, "cpu", None)
    assert (seen.in_features, seen.out_features, seen.patched, seen.needs_grad, seen.scalar_scale) == \
        (64, 48, False, False, True)
    layer.weight_function = [lambda w: w * 2]  # what ComfyUI hangs on a layer for its LoRA patches
    assert M.describe_call(layer, x).patched
    assert M.describe_call(fp8_linear(), x.float().requires_grad_()).needs_grad
    with torch.no_grad():
        assert not M.describe_call(fp8_linear(), x.float().requires_grad_()).needs_grad


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_activation_quantization(granularity):
    x = torch.randn(6, 64) * torch.tensor([1.0, 300.0, 0.001, 1.0, 1.0, 1.0])[:, None]
    values, scale = M.quantize_activation(x, granularity)
    assert values.dtype == E4M3 and scale.dtype == torch.float32
    assert scale.shape == (() if granularity == "tensor" else (6, 1))
    peak = values.float().abs().amax() if granularity == "tensor" else values.float().abs().amax(dim=1)
    assert bool((peak == M.E4M3_MAX).all())  # the largest magnitude lands on e4m3's largest value
    back = values.float() * scale
    # half an ulp of e4m3 (2^-4 relative) for normal values, 2^-10 of the scale below them
    assert bool(((back - x).abs() <= (x.abs() * 2 ** -4 + scale * 2 ** -10) * 1.0001).all())
    zeros, zero_scale = M.quantize_activation(torch.zeros(2, 16), granularity)
    assert not zeros.float().any() and bool(torch.isfinite(zero_scale).all())


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_scale_arithmetic_against_the_upcast_path(dtype, scaled, granularity):
    """Quantized activation x (its scale) x fp8 weight x scale_weight, emulated in float32."""
    layer = fp8_linear(1536, 512, dtype, scaled, bias=False)
    x = torch.randn(128, 1536, generator=torch.Generator().manual_seed(3))
    x[::7] *= 20  # a few loud tokens
    values, scale_x = M.quantize_activation(x, granularity)
    scale_w = M.weight_scale(layer, 512, granularity, x.device)
    assert scale_w.shape == (() if granularity == "tensor" else (1, 512))
    out = M.emulated_scaled_mm(values, layer.weight.t(), scale_x, scale_w, torch.float32)
    assert rel_l2(out, upcast(layer, x)) <= MAX_REL_L2


def cpu_scaled_mm_takes_rows() -> bool:
    """torch 2.13's CPU _scaled_mm takes per-row scales; older ones (2.11) only per-tensor ones."""
    a = torch.ones(16, 16).to(E4M3)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.float32)
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_torch_scaled_mm_on_cpu_is_the_emulated_product(out_dtype, granularity):
    """torch 2.13 has a CPU _scaled_mm (a slow reference kernel): it computes what we emulate."""
    if granularity == "row" and not cpu_scaled_mm_takes_rows():
        pytest.skip(f"torch {torch.__version__}'s CPU _scaled_mm takes per-tensor scales only")
    layer = fp8_linear(64, 48, E4M3, scaled=True, bias=False)
    values, scale_x = M.quantize_activation(torch.randn(16, 64), granularity)
    scale_w = M.weight_scale(layer, 48, granularity, torch.device("cpu"))
    got = torch._scaled_mm(values, layer.weight.t(), scale_a=scale_x, scale_b=scale_w, out_dtype=out_dtype)
    expected = M.emulated_scaled_mm(values, layer.weight.t(), scale_x, scale_w, out_dtype)
    tolerance = 1e-5 if out_dtype == torch.float32 else 1e-2  # bf16: one rounding of the result
    assert got.dtype == out_dtype and rel_l2(got, expected) <= tolerance


@pytest.fixture()
def fp8_on_cpu(monkeypatch):
    """Let Linear take the _scaled_mm path on the CPU (slow kernel; small layers only)."""
    monkeypatch.setattr(M, "ALLOW_CPU", True)
    monkeypatch.setattr(M, "_mode", "auto")  # the default is off (measured slower end to end on an H200)
    monkeypatch.setattr(M, "_failed", set())  # combinations an earlier test found missing
    calls = []
    real = torch._scaled_mm

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", counting)
    return calls


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])
def test_linear_forward_takes_the_fp8_path_with_bias_and_leading_dims(fp8_on_cpu, x_dtype):
    layer = fp8_linear()
    x = torch.randn(2, 5, 64).to(x_dtype)
    with torch.no_grad():
        out = layer(x)
        assert fp8_on_cpu == [(10, 64)]
        assert out.shape == (2, 5, 48) and out.dtype == x_dtype
        assert rel_l2(out, upcast(layer, x)) <= MAX_REL_L2
        with M.use_mode("off"):
            assert torch.equal(layer(x), F.linear(x, layer.compute_weight(x_dtype), layer.compute_bias(x_dtype)))
        assert len(fp8_on_cpu) == 1


def test_calls_it_cannot_take_upcast_as_before(fp8_on_cpu):
    layer = fp8_linear()
    x = torch.randn(4, 64)
    layer.weight_function = [lambda w: w * 0]  # a ComfyUI weight patch must be honoured
    assert not layer(x).sub(layer.compute_bias(torch.float32)).any()
    del layer.weight_function
    odd = fp8_linear(in_f=40)
    odd(torch.randn(4, 40))
    x.requires_grad_()
    layer(x).sum().backward()  # training through an fp8 base: the upcast path has a backward
    assert x.grad is not None and fp8_on_cpu == []


def test_a_dit_with_fp8_weights_and_an_unmerged_lora(fp8_on_cpu):
    """The whole model: every fp8 Linear through _scaled_mm, a LoRA's adapters on top."""
    model = random_dit("t2v").to(torch.bfloat16)
    for module in model.modules():
        if isinstance(module, ops.Linear):
            weight, scale = quantize_fp8(module.weight.float(), E4M3, scaled=True)
            module.weight = torch.nn.Parameter(weight, requires_grad=False)
            module.set_scale_weight(scale)
    spec = make_spec(model, default_targets(model.config, blocks=[0, 2]))
    stack = LoraStack()
    stack.add("test", high=write_comfyui_ab(spec), low=None)
    applied = stack.apply(model, expert="high", mode="unmerged")
    inputs = dit_inputs(model.config)
    inputs["x"] = inputs["x"].bfloat16()
    with M.use_mode("auto" if cpu_scaled_mm_takes_rows() else "tensor"):
        out = run(model, inputs)
    assert len(fp8_on_cpu) > 10 * model.config.num_layers
    with M.use_mode("off"):
        reference = run(model, inputs)
        applied.remove()
        without_lora = run(model, inputs)
    error = rel_l2(out, reference)
    assert error <= 3 * MAX_REL_L2  # errors of ~40 layers, partly averaged out
    assert rel_l2(without_lora, reference) > 3 * error  # so the adapters really ran on top


needs_fp8_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < M.MIN_CAPABILITY,
    reason="needs a CUDA GPU with fp8 tensor cores (compute capability >= 8.9)")


@needs_fp8_gpu
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("mode", ["tensor", "auto"])
def test_fp8_matmul_on_cuda_against_the_upcast_path(dtype, scaled, mode):
    layer = fp8_linear(1536, 512, dtype, scaled).cuda()
    x = torch.randn(3, 100, 1536, device="cuda").bfloat16()
    calls = []
    real = torch._scaled_mm
    try:
        torch._scaled_mm = lambda *a, **k: calls.append(1) or real(*a, **k)
        with M.use_mode(mode), torch.no_grad():
            out = layer(x)
    finally:
        torch._scaled_mm = real
    assert calls and out.dtype == torch.bfloat16 and out.shape == (3, 100, 512)
    assert rel_l2(out, upcast(layer, x)) <= MAX_REL_L2
    values, scale_x = M.quantize_activation(x.reshape(-1, 1536), "tensor")
    scale_w = M.weight_scale(layer, 512, "tensor", x.device)
    kernel = real(values, layer.weight.t(), scale_a=scale_x, scale_b=scale_w, out_dtype=torch.float32)
    # Hopper's fp8 tensor cores accumulate with fewer mantissa bits than float32: 1.0e-4 to 1.3e-4
    # relative L2 against the exact product on an H200 (torch 2.11, CUDA 13); a wrong scale is O(1)
    assert rel_l2(kernel, M.emulated_scaled_mm(values, layer.weight.t(), scale_x, scale_w, torch.float32)) <= 5e-4


@needs_fp8_gpu
def test_weights_left_in_ram_are_moved_per_call_on_cuda():
    """ComfyUI's lowvram leaves layers on the CPU; the fp8 weight goes over the wire as it is."""
    layer = fp8_linear(256, 128)
    x = torch.randn(8, 256, device="cuda").bfloat16()
    with torch.no_grad(), M.use_mode("auto"):
        out = layer(x)
    assert out.device.type == "cuda" and rel_l2(out, upcast(layer.cuda(), x)) <= MAX_REL_L2


@needs_fp8_gpu
@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_fused_quantization_on_cuda_matches_the_eager_one(granularity):
    """The compiled quantization the fp8 path uses on CUDA gives the eager scales and fp8 values."""
    x = torch.randn(3000, 1536, device="cuda").bfloat16()
    x[::7] *= 20
    values, scale = M.quantize_for_matmul(x, granularity)
    eager_values, eager_scale = M.quantize_activation(x, granularity)
    assert not M._fused_broken, "the fused quantization fell back to eager"
    assert torch.allclose(scale, eager_scale, rtol=1e-6, atol=0)
    same = (values.float() == eager_values.float()).float().mean().item()
    assert same >= 0.999, f"only {same:.4%} of the fp8 values agree"
