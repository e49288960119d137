"""Fuzz the model and LoRA loaders with damaged copies of real-layout files.

Every damaged file must load or raise one of the project's file errors (``CheckpointError``; for
LoRA files a ``ValueError``) whose message names the file. Never a raw
Python exception, never a hang. See tests/fuzzing.py for budgets and the long local run.
"""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ_SETTINGS, Timings, damage_bytes
from wanflow.model_loaders.clip_vision_loader import load_clip_vision
from wanflow.model_loaders.dit_loader import load_dit
from wanflow.model_loaders.errors import CheckpointError
from wanflow.model_loaders.lora_files import read_lora_file
from wanflow.model_loaders.lora_formats import parse_lora
from wanflow.model_loaders.text_encoder_loader import load_text_encoder
from wanflow.model_loaders.vae_loader import load_vae
from wanflow.runner.tiny_models import FILES, write_tiny_models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """The bytes of one tiny file per loader, in the layouts users have (Comfy-Org)."""
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_models(root)
    files = {"dit": root / "diffusion_models" / FILES.t2v_high, "i2v": root / "diffusion_models" / FILES.i2v_clip,
             "vae21": root / "vae" / FILES.vae21, "vae22": root / "vae" / FILES.vae22,
             "umt5": root / "text_encoders" / FILES.umt5, "clip": root / "clip_vision" / FILES.clip_vision,
             "lora": root / "loras" / FILES.lora_high}
    return {kind: path.read_bytes() for kind, path in files.items()}


def _load_lora(path):
    lora = read_lora_file(path)
    return parse_lora(lora.state_dict, default_alpha=lora.default_alpha)


LOADERS = {"dit": load_dit, "i2v": load_dit, "vae21": load_vae, "vae22": load_vae, "umt5": load_text_encoder,
           "clip": load_clip_vision, "lora": _load_lora}


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_damaged_files_load_or_get_a_named_error(originals, tmp_path_factory, kind):
    folder = tmp_path_factory.mktemp(f"fuzz_{kind}")
    expected = ValueError if kind == "lora" else CheckpointError
    timings = Timings(f"loader: {kind}")

    @FUZZ_SETTINGS
    @given(data=st.data(), suffix=st.sampled_from([".safetensors", ".pth"]))
    def check(data, suffix):
        path = folder / f"damaged_{kind}{suffix}"
        damaged = damage_bytes(originals[kind], data)
        path.write_bytes(damaged)
        try:
            with timings.example(f"{suffix}, {len(damaged)} of {len(originals[kind])} bytes"):
                LOADERS[kind](path)
        except expected as exc:
            assert path.name in str(exc), f"{type(exc).__name__} without the file name: {exc}"

    check()
    timings.report()
