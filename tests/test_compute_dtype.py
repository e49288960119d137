"""Compute dtype from what the device does fast (wan/compute_dtype.py): native-bf16 detection on
CPUs, the choice per storage dtype, and the weights staying in their storage dtype."""
import platform

import pytest
import torch

from wanflow.wan import compute_dtype as C

FP8 = torch.float8_e4m3fn


@pytest.fixture()
def fake_cpu(monkeypatch):
    """Describe a CPU to the detection: architecture, torch's dispatch level, feature probes, flags."""
    monkeypatch.delenv("WANFLOW_CPU_BF16", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)

    def describe(machine="x86_64", capability="AVX512", probes=None, flags=()):
        monkeypatch.setattr(platform, "machine", lambda: machine)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
            if probes is None:
                monkeypatch.delattr(torch.cpu, name, raising=False)
            else:
                monkeypatch.setattr(torch.cpu, name, (lambda value: lambda: value)(probes.get(name, False)),
                                    raising=False)
        monkeypatch.setattr(C, "_cpu_flags", lambda: frozenset(flags))
        C._detect_cpu_bf16.cache_clear()
        C.cpu_has_native_fp16.cache_clear()

    yield describe
    C._detect_cpu_bf16.cache_clear()
    C.cpu_has_native_fp16.cache_clear()


@pytest.mark.parametrize("cpu, env, native", [
    (dict(probes={"_is_avx512_bf16_supported": True}), {}, True),               # Cooper Lake, Zen 4
    (dict(probes={"_is_amx_tile_supported": True}), {}, True),                  # Sapphire Rapids
    (dict(probes={}), {}, False),                                               # Skylake-X: AVX-512, no bf16
    (dict(capability="AVX2", probes={}), {}, False),                            # AVX2 only (Zen 2/3, Haswell)
    (dict(capability="AVX2", probes={"_is_amx_tile_supported": True}), {}, False),  # ATEN_CPU_CAPABILITY=avx2
    (dict(probes={"_is_amx_tile_supported": True}), {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
    (dict(probes={"_is_amx_tile_supported": True}), {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),
    (dict(probes=None, flags=("avx2", "avx512f", "avx512_bf16")), {}, True),    # torch without the probes
    (dict(probes=None, flags=("avx2", "avx512f")), {}, False),
    (dict(machine="aarch64", capability="SVE256", flags=("asimd", "sve", "bf16")), {}, True),  # Graviton 3
    (dict(machine="aarch64", capability="DEFAULT", flags=("asimd", "asimdhp")), {}, False),    # Graviton 2
    (dict(probes={}), {"WANFLOW_CPU_BF16": "1"}, True),                         # the user's word wins
    (dict(probes={"_is_amx_tile_supported": True}), {"WANFLOW_CPU_BF16": "0"}, False),
])
def test_native_bf16_detection(fake_cpu, monkeypatch, cpu, env, native):
    fake_cpu(**cpu)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert C.cpu_has_native_bf16() is native
    assert C.compute_dtype_for(torch.bfloat16) == (torch.bfloat16 if native else torch.float32)


def test_detection_agrees_with_this_cpus_flags(monkeypatch):
    monkeypatch.delenv("WANFLOW_CPU_BF16", raising=False)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86 flags")
    flags = C._cpu_flags()
    expected = (torch.backends.cpu.get_cpu_capability() == "AVX512" and bool(flags & {"avx512_bf16", "amx_bf16"})
                and not C._onednn_capped_below_bf16())
    assert C.cpu_has_native_bf16() is expected


@pytest.mark.parametrize("storage, with_bf16, without", [
    (torch.float32, torch.float32, torch.float32),
    (torch.float64, torch.float64, torch.float64),
    (torch.bfloat16, torch.bfloat16, torch.float32),
    (FP8, torch.bfloat16, torch.float32),
    (torch.float8_e5m2, torch.bfloat16, torch.float32),
    (torch.uint8, torch.bfloat16, torch.float32),       # GGUF blocks
    (torch.float16, torch.float32, torch.float32),      # no AMX-FP16 in either case here
])
def test_choice_on_a_cpu_with_and_without_native_bf16(fake_cpu, monkeypatch, storage, with_bf16, without):
    fake_cpu(probes={})
    monkeypatch.setenv("WANFLOW_CPU_BF16", "1")
    assert C.compute_dtype_for(storage, torch.device("cpu")) == with_bf16
    monkeypatch.setenv("WANFLOW_CPU_BF16", "0")
    assert C.compute_dtype_for(storage, torch.device("cpu")) == without
    assert C.compute_dtype_for(storage) == without  # no device: the CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a real GPU the answer depends on the GPU")
def test_gpus_keep_half_precision(monkeypatch):
    monkeypatch.setenv("WANFLOW_CPU_BF16", "0")
    for storage, expected in ((torch.bfloat16, torch.bfloat16), (FP8, torch.bfloat16),
                              (torch.float16, torch.float16), (torch.float32, torch.float32)):
        assert C.compute_dtype_for(storage, torch.device("cuda")) == expected


def test_module_compute_dtype_follows_most_of_the_weights(monkeypatch):
    monkeypatch.setenv("WANFLOW_CPU_BF16", "0")
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.LayerNorm(64)).to(torch.bfloat16)
    model[1].float()
    assert C.module_compute_dtype(model) == torch.float32
    assert model[0].weight.dtype == torch.bfloat16  # nothing is converted
    monkeypatch.setenv("WANFLOW_CPU_BF16", "1")
    assert C.module_compute_dtype(model) == torch.bfloat16
    assert C.module_compute_dtype(torch.nn.ReLU()) == torch.float32
