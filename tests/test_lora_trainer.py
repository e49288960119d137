"""LoRA training on tiny random WanDiTs: adapters on a frozen storage-dtype base, the exported file
against our LoRA loader, expert noise ranges, and resume.

Tolerances: the in-training adapters and the loader's run-time adapters compute the same product
in float32 in a different order, so outputs agree to 1e-5; resume is compared to 1e-6.
"""
import json

import pytest
import torch
from safetensors import safe_open

from lora_fixtures import dit_inputs, random_dit, run, tiny_config, to_fp8
from wanflow.model_loaders.lora_files import guess_expert, read_lora_file
from wanflow.train import lora_network as ln
from wanflow.train import lora_trainer as lt
from wanflow.train.flow_matching import expert_sigmas
from wanflow.train.loop import LoopConfig
from wanflow.train.nano_latents import LatentSet, TextTable
from wanflow.wan import ops
from wanflow.wan.lora import LoraStack

TEXT_LEN = 6


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models are far faster on one thread, and do not fight other jobs for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_data(kind: str = "t2v", clips: int = 4, seed: int = 0) -> tuple[LatentSet, TextTable]:
    """The nano cache types, filled with random clips (2 latent frames of 4x4) and captions."""
    cfg = tiny_config(kind)
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(clips, cfg.out_dim, 2, 4, 4, generator=gen)
    y = torch.randn(clips, cfg.in_dim - cfg.out_dim, 2, 4, 4, generator=gen) if cfg.in_dim > cfg.out_dim else None
    text = TextTable([f"caption {i}" for i in range(clips)],
                     torch.randn(clips, TEXT_LEN, cfg.text_dim, generator=gen),
                     torch.randn(2, TEXT_LEN, cfg.text_dim, generator=gen))
    return LatentSet(latents, torch.arange(clips), y, []), text


def train_config(steps: int = 4, **kw) -> lt.LoraTrainConfig:
    loop = LoopConfig(steps=steps, lr=1e-2, warmup=1, checkpoint_every=kw.pop("checkpoint_every", 100),
                      log_every=1)
    return lt.LoraTrainConfig(shift=3.0, lora=kw.pop("lora", ln.LoraConfig(rank=4, alpha=8.0)), loop=loop,
                              batch=2, **kw)


def randomize_up(network: ln.LoraNetwork, seed: int = 7) -> None:
    """Training starts with up = 0 (no change); give the adapters a visible effect."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, adapter in network.items():
            adapter.up.copy_(torch.randn(adapter.up.shape, generator=gen) * 0.3)


def with_loader(model, path, inputs, expert="high"):
    stack = LoraStack()
    sd = read_lora_file(path).state_dict
    stack.add("trained", high=sd, low=sd)
    with stack.apply(model, expert=expert) as applied:
        assert applied.reports[0].matched_keys == applied.reports[0].total_keys
        return run(model, inputs)


def linear_state(model):
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, ops.Linear)}


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------

def test_targets_follow_the_chosen_blocks_and_modules():
    model = random_dit()
    config = ln.LoraConfig(rank=2, targets=("self_attn.q", "ffn.2"), blocks=(2, 0))
    network = ln.LoraNetwork.for_model(model, config)
    assert [p for p, _ in network.items()] == ["blocks.0.self_attn.q", "blocks.0.ffn.2",
                                                 "blocks.2.self_attn.q", "blocks.2.ffn.2"]
    down_ffn = dict(network.items())["blocks.0.ffn.2"]
    assert down_ffn.down.shape == (2, model.config.ffn_dim) and down_ffn.up.shape == (model.config.dim, 2)
    with pytest.raises(ValueError, match="blocks"):
        ln.LoraNetwork.for_model(model, ln.LoraConfig(blocks=(3,)))
    with pytest.raises(ValueError, match="unknown targets"):
        ln.LoraConfig(targets=("self_attn.qkv",))
    with pytest.raises(ValueError, match="missing"):
        ln.LoraNetwork.for_model(model, ln.LoraConfig(targets=("cross_attn.k_img",)))


def test_attaching_starts_at_the_base_output_and_detaching_restores_the_model():
    model = random_dit()
    inputs = dit_inputs(model.config)
    before = run(model, inputs)
    network = ln.LoraNetwork.for_model(model, ln.LoraConfig(rank=4))
    with ln.attach_lora(model, network, gradient_checkpointing=True):
        assert torch.equal(run(model, inputs), before)  # up starts at zero
        assert not any(p.requires_grad for p in model.parameters())
        assert len(model.blocks[1].self_attn.q.adapters) == 1
        with pytest.raises(RuntimeError, match="already"):
            ln.attach_lora(model, ln.LoraNetwork.for_model(model, ln.LoraConfig(rank=2)))
        assert len(model.blocks[1].self_attn.q.adapters) == 1  # the failed attach undid itself
    assert all(p.requires_grad for p in model.parameters())
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(not m.adapters for m in model.modules() if isinstance(m, ops.Linear))
    assert set(network.state_dict()) == {f"adapters.{k}.{f}" for k in network.adapters for f in ("down", "up")}


def test_frozen_linear_gradient_matches_plain_autograd_on_fp8():
    layer = ops.Linear(8, 5)
    layer.weight.data = layer.weight.data.to(torch.float8_e4m3fn)
    layer.set_scale_weight(torch.tensor(0.5))
    layer.requires_grad_(False)
    x = torch.randn(3, 8, requires_grad=True)
    ln._FrozenLinear.apply(x, layer).pow(2).sum().backward()
    ours, x.grad = x.grad, None
    torch.nn.functional.linear(x, layer.compute_weight(torch.float32), layer.bias).pow(2).sum().backward()
    assert torch.allclose(ours, x.grad, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_bytes", [64, 1 << 20])
def test_linear_with_two_adapters_matches_plain_autograd(dtype, chunk_bytes, monkeypatch):
    """One autograd node for the base and its adapters: same output and gradients as the maths
    written out with ordinary autograd (input and every factor), whole or recast 2 rows at a time."""
    monkeypatch.setattr(ln, "CHUNK_BYTES", {"cpu": chunk_bytes})
    torch.manual_seed(0)
    layer = ops.Linear(8, 5)
    layer.requires_grad_(False)
    adapters = [ln.LoraAdapter(8, 5, 3, scale, torch.Generator().manual_seed(i)) for i, scale in enumerate((0.5, 2.0))]
    for adapter in adapters:
        adapter.up.data.normal_()
    x = torch.randn(2, 3, 8, dtype=dtype, requires_grad=True)
    factors = [t for a in adapters for t in (a.down, a.up)]
    ours = ln._FrozenLinear.apply(x, layer, tuple(a.scale for a in adapters), *factors)
    weight_out = torch.randn_like(ours)
    (ours.float() * weight_out.float()).sum().backward()
    mine = [x.grad] + [t.grad for t in factors]
    x.grad = None
    for t in factors:
        t.grad = None
    plain = torch.nn.functional.linear(x, layer.compute_weight(dtype), layer.compute_bias(dtype))
    for a in adapters:
        plain = plain + (torch.nn.functional.linear(torch.nn.functional.linear(x.float(), a.down), a.up)
                         * a.scale).to(dtype)
    (plain.float() * weight_out.float()).sum().backward()
    reference = [x.grad] + [t.grad for t in factors]
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(ours, plain, atol=tolerance, rtol=tolerance)
    for got, want in zip(mine, reference):
        torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)


def test_backward_keeps_no_upcast_copy_of_a_base_weight():
    """Every tensor autograd saves is an activation or a LoRA factor: none has a base Linear's
    weight shape, so an fp8 base is never held wider, even without checkpointing."""
    model = random_dit()
    to_fp8(model, scaled=True)
    weight_shapes = {tuple(w.shape) for w in linear_state(model).values()}
    network = ln.LoraNetwork.for_model(model, ln.LoraConfig(rank=4))
    inputs = dit_inputs(model.config)
    saved: list[tuple[int, ...]] = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with ln.attach_lora(model, network), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(inputs["x"], inputs["t"], inputs["context"]).square().mean().backward()
    assert saved and not weight_shapes & set(saved)
    assert all(w.dtype == torch.float8_e4m3fn and w.grad is None for w in linear_state(model).values())
    assert all(p.grad is not None for p in network.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    model = random_dit()
    inputs = dit_inputs(model.config)
    grads = []
    for checkpointing in (False, True):
        network = ln.LoraNetwork.for_model(model, ln.LoraConfig(rank=4), seed=1)
        randomize_up(network)
        with ln.attach_lora(model, network, gradient_checkpointing=checkpointing):
            model(inputs["x"], inputs["t"], inputs["context"]).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in network.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# --------------------------------------------------------------------------------------------
# The exported file
# --------------------------------------------------------------------------------------------

def test_export_uses_comfyui_keys_alpha_and_metadata(tmp_path):
    model = random_dit()
    network = ln.LoraNetwork.for_model(model, ln.LoraConfig(rank=4, alpha=2.0, blocks=(1,)))
    path = ln.save_lora(network, tmp_path / "style.safetensors",
                        ln.lora_metadata(network, base_model="tiny-t2v", steps=12))
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        alpha = f.get_tensor("diffusion_model.blocks.1.ffn.0.alpha")
    expected = {f"diffusion_model.blocks.1.{t}.{part}" for t in ln.DEFAULT_TARGETS
                for part in ("lora_A.weight", "lora_B.weight", "alpha")}
    assert keys == expected and alpha.ndim == 0 and alpha.item() == 2.0
    assert meta["trainer"] == "wanflow" and meta["base_model"] == "tiny-t2v"
    assert (meta["rank"], meta["steps"], meta["blocks"]) == ("4", "12", "1")
    with pytest.raises(FileExistsError):
        ln.save_lora(network, path, {})


@pytest.mark.parametrize("storage", ["fp32", "bf16", "fp8", "fp8_scaled"])
def test_saved_file_through_our_loader_equals_the_training_adapters(tmp_path, storage):
    model = random_dit()
    if storage == "bf16":
        for w in linear_state(model).values():
            w.data = w.data.to(torch.bfloat16)
    elif storage.startswith("fp8"):
        to_fp8(model, scaled=storage == "fp8_scaled")
    inputs = dit_inputs(model.config)
    network = ln.LoraNetwork.for_model(model, ln.LoraConfig(rank=4, alpha=8.0, blocks=(0, 2)))
    randomize_up(network)
    with ln.attach_lora(model, network):
        trained = run(model, inputs)
    path = ln.save_lora(network, tmp_path / "lora.safetensors", {})
    loaded = with_loader(model, path, inputs)
    assert (trained - run(model, inputs)).abs().max() > 1e-2  # the LoRA does change the output
    assert torch.allclose(loaded, trained, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("expert, task", [("high", "t2v"), ("low", "t2v"), ("high", "i2v-2.2"), ("full", "t2v")])
def test_sigmas_stay_on_the_expert_side_of_the_sampler_boundary(expert, task):
    model = random_dit(task)
    boundary = lt.default_boundary(model)
    assert boundary == (0.9 if task == "i2v-2.2" else 0.875)
    sigmas = expert_sigmas(expert, 5.0, boundary).sample(2000, torch.Generator().manual_seed(0))
    if expert == "high":
        assert sigmas.min() >= boundary
    elif expert == "low":
        assert sigmas.max() < boundary
    else:
        assert sigmas.min() < boundary <= sigmas.max()


def test_training_changes_only_the_lora_and_logs_the_loss(tmp_path):
    model = random_dit()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    data, text = tiny_data()
    seen = []
    trained = lt.train_lora(model, data, text, train_config(steps=5, expert="low"), tmp_path / "w",
                            quiet=True, on_step=lambda step, loss: seen.append(step))
    assert seen == list(range(5))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.items())
    assert all(a.up.abs().max() > 0 for _, a in trained.network.items())
    rows = (tmp_path / "w" / "loss.csv").read_text().splitlines()
    assert rows[0].startswith("step,seconds,loss") and len(rows) == 6
    meta = trained.metadata("tiny")
    assert (meta["expert"], meta["sigma_high"], meta["steps"]) == ("low", "0.875", "5")


def test_bf16_compute_on_an_fp8_base_trains_and_leaves_the_base_stored_as_loaded(tmp_path):
    model = random_dit()
    to_fp8(model, scaled=True)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    data, text = tiny_data()
    losses = []
    trained = lt.train_lora(model, data, text, train_config(steps=3, compute_dtype=torch.bfloat16), tmp_path,
                            quiet=True, on_step=lambda step, loss: losses.append(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in trained.network.parameters())
    for key, value in model.state_dict().items():
        bits = [t.reshape(-1).view(torch.uint8) for t in (value, base[key])]
        assert value.dtype == base[key].dtype and torch.equal(*bits), key


def _run(model, work, stop_at=None):
    def hook(step, loss):
        if step == stop_at:
            raise KeyboardInterrupt  # the user stops the run
    data, text = tiny_data()
    cfg = train_config(steps=7, checkpoint_every=3, gradient_checkpointing=True)
    return lt.train_lora(model, data, text, cfg, work, quiet=True, on_step=hook)


def test_an_interrupted_run_resumes_to_the_same_lora(tmp_path):
    model = random_dit()
    straight = _run(model, tmp_path / "a").network.state_dict()
    with pytest.raises(KeyboardInterrupt):
        _run(model, tmp_path / "b", stop_at=5)  # last checkpoint after step 3
    assert all(not m.adapters for m in model.modules() if isinstance(m, ops.Linear))
    resumed = _run(model, tmp_path / "b").network.state_dict()
    for key, value in straight.items():
        assert torch.allclose(resumed[key], value, atol=1e-6, rtol=0), key
    steps = [r.split(",")[0] for r in (tmp_path / "b" / "loss.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(7)]


def test_resume_refuses_a_checkpoint_of_another_lora(tmp_path):
    model = random_dit()
    data, text = tiny_data()
    lt.train_lora(model, data, text, train_config(steps=2), tmp_path, quiet=True)
    assert json.loads((tmp_path / lt.OPTIONS_FILE).read_text())["rank"] == 4
    with pytest.raises(ValueError, match="rank"):
        lt.train_lora(model, data, text, train_config(steps=2, lora=ln.LoraConfig(rank=8)), tmp_path, quiet=True)


def test_i2v_expert_pair_trains_on_the_condition_and_saves_loadable_files(tmp_path):
    high, low = random_dit("i2v-2.2", seed=0), random_dit("i2v-2.2", seed=1)
    data, text = tiny_data("i2v-2.2")
    with pytest.raises(ValueError, match="condition"):
        lt.train_lora(high, LatentSet(data.latents, data.caption_index, None, []), text, train_config(),
                      tmp_path / "no_y", quiet=True)
    cfg = train_config(steps=2, lora=ln.LoraConfig(rank=2, alpha=2.0, blocks=(1,)))
    pair = lt.train_lora_pair(high, low, data, text, cfg, tmp_path / "work", quiet=True)
    assert (pair["high"].sigmas.low, pair["low"].sigmas.high) == (0.9, 0.9)
    paths = lt.save_pair(pair, tmp_path / "style.safetensors", {"high": "h.safetensors", "low": "l.safetensors"})
    assert {e: guess_expert(p) for e, p in paths.items()} == {"high": "high", "low": "low"}
    inputs = dit_inputs(high.config)
    inputs["x"] = inputs["x"][:, :16]
    inputs["y"] = torch.randn(1, 20, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    for expert, model in (("high", high), ("low", low)):
        with ln.attach_lora(model, pair[expert].network):
            trained = run(model, inputs)
        assert torch.allclose(with_loader(model, paths[expert], inputs, expert), trained, atol=1e-5)
    with pytest.raises(FileExistsError):
        lt.save_pair(pair, tmp_path / "style.safetensors", {"high": "h", "low": "l"})


def test_cut_padding_and_collapsed_attention_train_the_same_lora_as_the_padded_context(tmp_path, monkeypatch):
    """The trainer drops the zero rows every caption shares and trains through the collapsed
    padding (wan/text_padding.py): the same maths as the DiT's own padded path, less memory.
    Losses agree to float rounding; Adam turns rounding in near-zero gradients into small
    differences of the factors (1 to 3 % of their size on the cross-attention q/k here, depending
    on the CPU's vector unit), so the factors are compared relative to their size."""
    data, text = tiny_data()
    text.contexts[:, 3:] = 0                      # 3 real tokens, then zero padding, as umT5 hands them
    text.uncond[:, 1:] = 0
    model = random_dit()
    losses: dict[str, list[float]] = {"cut": [], "padded": []}
    cut = lt.train_lora(model, data, text, train_config(steps=3), tmp_path / "cut", quiet=True,
                        on_step=lambda step, loss: losses["cut"].append(loss))
    assert model.collapse_text_padding is False   # restored after training

    monkeypatch.setattr(lt, "_trimmed", lambda t: t)
    monkeypatch.setattr(type(model), "collapse_text_padding",
                        property(lambda self: False, lambda self, value: None), raising=False)
    padded = lt.train_lora(random_dit(), data, text, train_config(steps=3), tmp_path / "padded", quiet=True,
                           on_step=lambda step, loss: losses["padded"].append(loss))
    assert losses["cut"] == pytest.approx(losses["padded"], rel=1e-5)
    for (path, a), (_, b) in zip(cut.network.items(), padded.network.items()):
        for mine, theirs in ((a.up, b.up), (a.down, b.down)):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0.05 * float(theirs.abs().max()), msg=path)


def test_real_length_is_the_last_non_zero_row_over_all_contexts():
    from wanflow.wan.text_padding import real_length

    contexts = torch.zeros(3, 10, 4)
    contexts[0, :2] = 1
    contexts[2, 4, 1] = -1
    assert real_length(contexts) == 5
    assert real_length(torch.zeros(2, 10, 4)) == 1
