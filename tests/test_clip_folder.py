"""The clip-folder reader for LoRA training: finding clips and captions, bucket fitting, 4k+1
trimming, skipped clips reported by name, and the on-disk cache (checked with counting stub
encoders, so no model is needed)."""
import logging
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from wanflow.train import clip_folder as cf
from wanflow.train.nano_dit import Batches

OPTIONS = cf.ClipOptions(width=32, height=32, max_frames=13, max_aspect_ratio=2.0)
TEXT_LEN, TEXT_DIM = 3, 4


class StubEncoders:
    """Latents ``[B, 2, F, H/8, W/8]`` from mean pixels, contexts from caption lengths; counts calls
    and keeps the pixels it saw."""

    def __init__(self):
        self.video_calls, self.text_calls, self.pixels, self.prompts = 0, 0, [], []

    def encode(self, pixels):
        self.video_calls += 1
        self.pixels.append(pixels)
        pooled = torch.nn.functional.avg_pool3d(pixels, (1, 8, 8))
        return torch.cat([pooled[:, :1], pooled[:, 1:2]], dim=1)

    def encode_text(self, prompts):
        self.text_calls += 1
        self.prompts.append(list(prompts))
        return torch.stack([torch.full((TEXT_LEN, TEXT_DIM), float(len(p))) for p in prompts])


def frames_array(count, width, height, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def write_video(path, frames, codec="libx264"):
    fmt = "webm" if path.suffix == ".webm" else "mp4"
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(16, 1))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_pngs(folder, frames):
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{i}.png")


def caption(path, text):
    path.write_text(text)


def load(folder, stub, options=OPTIONS, encoder_id="stub-v1", **kw):
    return cf.load_clip_folder(folder, options, stub.encode, stub.encode_text, encoder_id, **kw)


@pytest.fixture
def folder(tmp_path):
    """A good mp4, webm and PNG sequence, all 9+ frames at bucket-compatible aspects."""
    data = tmp_path / "clips"
    data.mkdir()
    write_video(data / "a.mp4", frames_array(10, 48, 32, 1))
    caption(data / "a.txt", "a red ball")
    write_video(data / "b.webm", frames_array(14, 32, 32, 2), codec="libvpx")
    caption(data / "b.txt", "  a blue cube\n")
    write_pngs(data / "c", frames_array(11, 32, 40, 3))
    caption(data / "c.txt", "a red ball")
    return data


def test_reads_every_kind_into_one_bucket_and_4k_plus_1_frames(folder):
    stub = StubEncoders()
    data = load(folder, stub, batch=2)
    # Shortest usable clip (10 frames) sets 9 frames for all; 14 frames would give 13 alone.
    assert data.frames == 9
    assert data.latents.names == ["a.mp4", "b.webm", "c"]
    assert data.latents.latents.shape == (3, 2, 9, 4, 4)
    assert data.latents.i2v_y is None
    assert stub.video_calls == 2  # batches of 2
    for pixels in stub.pixels:
        assert pixels.shape[1:] == (3, 9, 32, 32) and pixels.dtype == torch.float32
        assert pixels.min() >= -1 and pixels.max() <= 1
    # Captions are stripped and de-duplicated; "" is encoded for caption dropout.
    assert data.text.captions == ["a blue cube", "a red ball"]
    assert data.latents.caption_index.tolist() == [1, 0, 1]
    assert stub.prompts == [["a blue cube", "a red ball", ""]]
    assert data.text.contexts.shape == (2, TEXT_LEN, TEXT_DIM)
    assert data.text.uncond.shape == (1, TEXT_LEN, TEXT_DIM)
    assert data.skipped == []


def test_result_feeds_the_trainers_batches(folder):
    data = load(folder, StubEncoders())
    x0, context, y = Batches(data.latents, data.text, torch.Generator().manual_seed(0), with_y=False)(4)
    assert x0.shape == (4, 2, 9, 4, 4) and context.shape == (4, TEXT_LEN, TEXT_DIM) and y is None


def test_max_frames_caps_and_first_frames_are_kept(tmp_path):
    frames = frames_array(20, 32, 32, 4)
    write_pngs(tmp_path / "long", frames)
    caption(tmp_path / "long.txt", "long")
    stub = StubEncoders()
    data = load(tmp_path, stub, options=cf.ClipOptions(32, 32, max_frames=12), cache_dir=tmp_path / "cache")
    assert data.frames == 9
    expected = torch.from_numpy(frames[:9]).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert torch.allclose(stub.pixels[0][0], expected)


def test_keeps_aspect_and_crops_the_centre(tmp_path):
    # 64x32 frames into a 32x32 bucket: no scaling needed on the height, so the crop is exact.
    frames = frames_array(5, 64, 32, 5)
    write_pngs(tmp_path / "wide", frames)
    caption(tmp_path / "wide.txt", "wide")
    stub = StubEncoders()
    load(tmp_path, stub)
    expected = torch.from_numpy(frames[:, :, 16:48]).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert torch.allclose(stub.pixels[0][0], expected)
    assert cf.vae_frames(5, 81) == 5 and cf.vae_frames(8, 81) == 5 and cf.vae_frames(100, 81) == 81


def test_bad_clips_are_skipped_by_name_with_reason(folder, caplog):
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    caption(folder / "broken.txt", "broken")
    write_pngs(folder / "short", frames_array(3, 32, 32))
    caption(folder / "short.txt", "short")
    write_video(folder / "nocap.mp4", frames_array(9, 32, 32))
    write_video(folder / "empty.mp4", frames_array(9, 32, 32))
    caption(folder / "empty.txt", " \n ")
    write_pngs(folder / "tall", frames_array(5, 16, 48))
    caption(folder / "tall.txt", "tall")
    (folder / "notes.md").write_text("ignored: not a clip")
    with caplog.at_level(logging.WARNING, logger=cf.__name__):
        data = load(folder, StubEncoders())
    reasons = {path.name: reason for path, reason in data.skipped}
    assert set(reasons) == {"broken.mp4", "short", "nocap.mp4", "empty.mp4", "tall"}
    assert reasons["broken.mp4"].startswith("unreadable")
    assert "too short: 3 frame" in reasons["short"]
    assert "no caption file nocap.txt" in reasons["nocap.mp4"]
    assert "empty" in reasons["empty.mp4"]
    assert "aspect ratio 16x48" in reasons["tall"]
    assert data.latents.names == ["a.mp4", "b.webm", "c"]
    for name in reasons:
        assert any(name in record.getMessage() for record in caplog.records)


def test_nothing_usable_raises_before_encoding(tmp_path):
    write_pngs(tmp_path / "short", frames_array(2, 32, 32))
    caption(tmp_path / "short.txt", "short")
    stub = StubEncoders()
    with pytest.raises(ValueError) as error:
        load(tmp_path, stub)
    message = str(error.value)
    assert str(tmp_path) in message and "short: too short" in message and "name.txt" in message
    assert stub.video_calls == stub.text_calls == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no clip files"):
        load(empty, stub)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing", stub)


def test_second_call_loads_the_cache_without_encoding(folder, tmp_path):
    first_stub, second_stub = StubEncoders(), StubEncoders()
    first = load(folder, first_stub, cache_dir=tmp_path / "cache")
    second = load(folder, second_stub, cache_dir=tmp_path / "cache")
    assert second_stub.video_calls == second_stub.text_calls == 0
    assert second.cache_path == first.cache_path and first.cache_path.is_file()
    assert torch.equal(second.latents.latents, first.latents.latents)
    assert torch.equal(second.text.contexts, first.text.contexts)
    assert torch.equal(second.text.uncond, first.text.uncond)
    assert second.latents.names == first.latents.names and second.text.captions == first.text.captions
    assert second.frames == first.frames


def test_default_cache_lives_hidden_in_the_folder(folder):
    data = load(folder, StubEncoders())
    assert data.cache_path.parent == folder / ".wanflow_cache"
    stub = StubEncoders()
    load(folder, stub)  # the cache folder itself is not taken for a clip or a change
    assert stub.video_calls == 0


def test_skipped_clips_are_reported_again_from_the_cache(folder, tmp_path, caplog):
    (folder / "broken.webm").write_bytes(b"junk")
    caption(folder / "broken.txt", "broken")
    load(folder, StubEncoders(), cache_dir=tmp_path / "cache")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=cf.__name__):
        data = load(folder, StubEncoders(), cache_dir=tmp_path / "cache")
    assert [p.name for p, _ in data.skipped] == ["broken.webm"]
    assert any("broken.webm" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("change", ["clip", "caption", "frame", "options", "encoder"])
def test_changed_inputs_invalidate_the_cache(folder, tmp_path, change):
    cache = tmp_path / "cache"
    load(folder, StubEncoders(), cache_dir=cache)
    options, encoder_id = OPTIONS, "stub-v1"
    if change == "clip":
        write_video(folder / "a.mp4", frames_array(10, 48, 32, 99))
    elif change == "caption":
        caption(folder / "a.txt", "a green ball")
    elif change == "frame":
        Image.fromarray(frames_array(1, 32, 40, 98)[0]).save(folder / "c" / "frame_0.png")
    elif change == "options":
        options = cf.ClipOptions(width=48, height=32, max_frames=13)
    else:
        encoder_id = "stub-v2"
    stub = StubEncoders()
    data = load(folder, stub, options=options, encoder_id=encoder_id, cache_dir=cache)
    assert stub.video_calls > 0 and stub.text_calls == 1
    assert len(list(cache.glob("clips-*.pt"))) == 2 and data.cache_path.is_file()


def test_options_are_checked():
    with pytest.raises(ValueError, match="multiple of 16"):
        cf.ClipOptions(width=30, height=32)
    with pytest.raises(ValueError, match="max_frames"):
        cf.ClipOptions(max_frames=4)
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        cf.ClipOptions(max_aspect_ratio=0.5)
