"""The Train LoRA node on the shipped nano models: writes models/loras/<name>, never overwrites,
stops on Cancel and resumes when queued again, and returns a loss-curve IMAGE."""
import pytest
import torch

from test_train_lora_command import write_clip_folder
from wanflow.model_loaders.lora_files import read_lora_file
from wanflow.nano.files import NANO
from wanflow.nodes import comfy_adapter as ca
from wanflow.nodes.loader_nodes import WanFlowModelLoader, WanFlowTextEncoderLoader, WanFlowVAELoader
from wanflow.nodes.train_nodes import WanFlowTrainLora

pytestmark = pytest.mark.slow


@pytest.fixture()
def graph(tmp_path):
    (tmp_path / "models").mkdir()
    ca.configure_headless(tmp_path / "models", tmp_path / "input", tmp_path / "output")
    write_clip_folder(tmp_path / "input" / "clips")
    model = WanFlowModelLoader().load(NANO.t2v_low, "default", "sdpa")["result"][0]
    (vae,) = WanFlowVAELoader().load(NANO.vae)
    (text,) = WanFlowTextEncoderLoader().load(NANO.umt5, "default")
    yield {"model": model, "vae": vae, "text_encoder": text}
    ca.configure_headless(None, None, None)
    ca._headless.models_dir = None


def widgets(**changes):
    values = dict(data_folder="clips", lora_name="mine", steps=4, learning_rate=1e-3, rank=4, alpha=0.0,
                  expert="auto", width=64, height=64, max_frames=5, batch=1, seed=0, gradient_checkpointing=True)
    return {**values, **changes}


def test_trains_saves_in_loras_and_shows_the_loss(graph, tmp_path):
    out = WanFlowTrainLora().train(**graph, **widgets())
    name, curve = out["result"]
    assert name == "mine.safetensors"
    path = tmp_path / "models" / "loras" / name
    assert read_lora_file(path).state_dict
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and curve.dtype == torch.float32
    assert 0 < curve.mean() < 1                         # a picture, not a blank
    with pytest.raises(FileExistsError, match="never overwritten"):
        WanFlowTrainLora().train(**graph, **widgets())


def test_cancel_stops_and_queueing_again_resumes(graph, tmp_path, monkeypatch):
    steps_seen = []
    real_check = ca.check_interrupted

    def cancel_at_step_6():
        steps_seen.append(1)
        if len(steps_seen) == 6:
            ca.request_interrupt()
        real_check()

    monkeypatch.setattr(ca, "check_interrupted", cancel_at_step_6)
    monkeypatch.setattr("wanflow.nodes.train_nodes.CHECKPOINT_EVERY", 2)
    with pytest.raises(ca.Interrupted):
        WanFlowTrainLora().train(**graph, **widgets(steps=8))
    assert not (tmp_path / "models" / "loras" / "mine.safetensors").exists()
    steps_seen.clear()
    WanFlowTrainLora().train(**graph, **widgets(steps=8))
    assert len(steps_seen) == 4      # resumed from the checkpoint at step 4, ran steps 4..7
    assert (tmp_path / "models" / "loras" / "mine.safetensors").exists()


def test_bad_widgets_are_named_before_any_work(graph):
    with pytest.raises(FileNotFoundError, match="data_folder"):
        WanFlowTrainLora().train(**graph, **widgets(data_folder="nope"))
    with pytest.raises(ValueError, match="lora_name"):
        WanFlowTrainLora().train(**graph, **widgets(lora_name="../escape"))
