"""The collapsed text padding (wan/text_padding.py) gives the model's original output and gradients."""
import dataclasses

import pytest
import torch

from wanflow.train.nano_dit import NANO_DIT
from wanflow.train.nano_vace import NANO_VACE
from wanflow.wan.dit import WanDiT
from wanflow.wan.text_padding import collapse_padding

from dit_testing import randomize_


def contexts(lengths: list[int], total: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ctx = torch.zeros(len(lengths), total, dim)
    for i, n in enumerate(lengths):
        ctx[i, :n] = torch.randn(n, dim, generator=g)
    return ctx


def test_collapse_keeps_real_rows_and_weighs_the_padding():
    ctx = contexts([3, 5], 512, 4)
    compact, bias = collapse_padding(ctx, 512)
    assert compact.shape == (2, 6, 4)
    assert torch.equal(compact[0, :3], ctx[0, :3]) and torch.equal(compact[1, :5], ctx[1, :5])
    assert bias[0, :3].eq(0).all() and bias[0, 3] == pytest.approx(torch.log(torch.tensor(509.0)).item())
    assert torch.isinf(bias[0, 4:]).all() and bias[1, 5] == pytest.approx(torch.log(torch.tensor(507.0)).item())


def test_a_context_without_padding_is_kept_whole():
    ctx = contexts([8, 2], 8, 4)
    compact, bias = collapse_padding(ctx, 8)
    assert compact.shape == (2, 8, 4) and torch.equal(compact, ctx)
    assert bias[0].eq(0).all() and torch.isinf(bias[1, 3:]).all()


@pytest.mark.parametrize("config", [NANO_DIT, NANO_VACE], ids=["t2v", "vace"])
@pytest.mark.parametrize("given", [512, 7], ids=["padded", "short"])
def test_model_output_and_gradients_equal_the_original(config, given):
    torch.manual_seed(0)
    model = WanDiT(dataclasses.replace(config, num_layers=2, vace_layers=(0,) if config.vace_layers else ()))
    randomize_(model, 1)
    x = torch.randn(2, 16, 2, 4, 4)
    ctx = contexts([5, 7], given, config.text_dim)
    kwargs = {"vace_context": torch.randn(2, config.vace_in_dim, 2, 4, 4)} if config.vace_layers else {}
    results = []
    for collapse in (False, True):
        model.zero_grad()
        model.collapse_text_padding = collapse
        out = model(x, torch.tensor([300.0, 800.0]), ctx, **kwargs)
        out.square().mean().backward()
        results.append((out.detach(), model.text_embedding[0].weight.grad.clone(), model.blocks[0].cross_attn.k.weight.grad.clone()))
    for plain, collapsed in zip(*results):
        torch.testing.assert_close(collapsed, plain, rtol=1e-4, atol=1e-5)


def test_the_loader_collapses_the_padding_for_nano_models_only(tmp_path):
    from wanflow.model_loaders.dit_loader import load_dit
    from wanflow.train.nano_files import save_dit

    for config, expected in ((NANO_DIT, True), (dataclasses.replace(NANO_DIT, dim=256, num_heads=2), False)):
        path = tmp_path / f"dim{config.dim}.safetensors"
        save_dit(WanDiT(config), path, "test")
        assert load_dit(path).model.collapse_text_padding is expected
