"""``wanflow train-nano`` end to end with a few steps per stage: every stage runs, writes files in
the real layouts, and the normal loaders read them back as the nano family."""
import pytest

from wanflow.model_loaders.dit_loader import load_dit
from wanflow.model_loaders.lora_files import guess_expert, read_lora_file
from wanflow.model_loaders.text_encoder_loader import load_text_encoder
from wanflow.model_loaders.vae_loader import load_vae
from wanflow.nano.files import LORA_STYLES, NANO
from wanflow.nano.vocabulary import training_scenes
from wanflow.runner import cli, errors
from wanflow.train import nano_recipe
from wanflow.train.loop import LoopConfig

pytestmark = pytest.mark.slow


def few(steps: int) -> LoopConfig:
    return LoopConfig(steps=steps, lr=1e-4, warmup=1, checkpoint_every=2)


def test_every_stage_runs_and_writes_loadable_nano_files(tmp_path):
    ctx = nano_recipe.StageContext(out=tmp_path / "models", work=tmp_path / "work", quiet=True, clips_per_scene=1,
                                   scenes=training_scenes()[:4],
                                   loops={"vae": few(3), "vae_decoder": few(2), "t2v_base": few(2), "expert": few(2),
                                          "uncond": few(2), "vace": few(2), "lora": few(2)},
                                   fit_clips=16)
    timings = nano_recipe.run(list(nano_recipe.STAGES), ctx)
    assert list(timings) == list(nano_recipe.STAGES)
    for name, task, expert in ((NANO.t2v_high, "t2v", "high"), (NANO.t2v_low, "t2v", "low"),
                               (NANO.i2v_high, "i2v", "high"), (NANO.i2v_low, "i2v", "low"),
                               (NANO.vace, "vace", None)):
        variant = load_dit(ctx.file(name)).variant
        assert (variant.task, variant.size, variant.expert) == (task, "nano", expert), variant.name
        assert variant.defaults.sizes == ((64, 64),)
    assert load_vae(ctx.file(NANO.vae)).version == "2.1"
    assert load_text_encoder(ctx.file(NANO.umt5)).tokenizer.vocab_size == 128
    for style in LORA_STYLES:
        for expert in ("high", "low"):
            path = ctx.file(NANO.lora(style, expert))
            assert guess_expert(path) == expert
            assert len(read_lora_file(path).state_dict) > 0
    logs = sorted(p.name for p in (tmp_path / "training_logs").iterdir())
    assert logs == sorted(f"{run.replace('/', '_')}.csv" for runs in nano_recipe.STAGE_RUNS.values() for run in runs)
    assert all((tmp_path / "training_logs" / name).read_text().startswith("step,") for name in logs)


def test_a_stage_without_its_inputs_says_which_stage_to_run(tmp_path, capsys):
    code = cli.main(["train-nano", "--stage", "t2v", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "m")])
    assert code == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert "run the 'vae' stage first" in err and not (tmp_path / "m").exists()


def test_unknown_stage_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["train-nano", "--stage", "colour", "--work", str(tmp_path)]) == errors.EXIT_USAGE
    assert "unknown stage" in capsys.readouterr().err
