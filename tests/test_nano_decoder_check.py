"""The decoder check (``train/nano_decoder_check.py``): its noise matches the pair's error in size,
and on the shipped models every row decodes below the plain round trip."""
import numpy as np
import pytest
import torch

from wanflow.nano.files import MODELS_DIR, NANO
from wanflow.nano.vocabulary import EVAL_SCENES
from wanflow.train.nano_decoder_check import ROWS, decoder_check, frame_norm, noise_like, span_psnr
from wanflow.train.nano_shape_check import load_nano_t2v

from nano_testing import need_nano


def test_noise_has_the_errors_size_in_every_latent_frame():
    error = torch.randn(1, 16, 5, 8, 8) * torch.tensor([0.1, 0.5, 1.0, 2.0, 0.3])[None, None, :, None, None]
    error[..., :4, :] = 0                   # the error sits in half of each frame's cells
    generator = torch.Generator().manual_seed(0)
    for where in (False, True):
        noise = noise_like(error, generator, where)
        assert torch.allclose(frame_norm(noise), frame_norm(error), rtol=1e-5)
        assert not torch.allclose(noise, error)
    shaped = noise_like(error, generator, where=True)
    assert shaped[..., :4, :].abs().max() == 0 and (shaped[..., 4:, :] != 0).all()


def test_span_psnr_reads_each_span():
    clip = np.zeros((17, 8, 8, 3), np.uint8)
    video = clip.copy()
    video[1:9] = 255                        # frames 1-8 entirely wrong, the rest exact
    first, middle, last = span_psnr(video, clip)
    assert middle == pytest.approx(0.0) and first > 100 and last > 100


@pytest.mark.slow
def test_on_the_shipped_models_every_error_decodes_below_the_round_trip():
    need_nano(NANO.t2v_high, NANO.t2v_low, NANO.vae, NANO.umt5)
    check = decoder_check(*load_nano_t2v(MODELS_DIR), EVAL_SCENES[:2], denoise=0.3)
    assert set(check.psnr) == set(ROWS) and len(check.channel_error) == 16
    plain = check.psnr["round trip"]
    assert plain[0] > 25, check             # the VAE alone gives the first frame back
    assert all(v < p for v, p in zip(check.psnr["pair"], plain)), check
    for row in ROWS[2:]:
        # noise of the pair's error size, where that error is small (the later frames of a centred
        # clip), may leave a span a few hundredths of a dB over the round trip, never more
        assert all(v < p + 0.25 for v, p in zip(check.psnr[row], plain)), check
    assert all(0 < e < 1 for e in check.channel_error), check
