"""Save video: mp4 / webp / png round trips with the workflow embedded, counters, bad names."""
import av
import numpy as np
import pytest
import torch
from PIL import Image

from wanflow.nodes import comfy_adapter as ca
from wanflow.nodes.save_video import WanFlowSaveVideo, quality_to_crf
from wanflow.nodes.video_files import read_video_metadata

PROMPT = {"1": {"class_type": "WanFlowSaveVideo", "inputs": {"fps": 16.0}}}
WORKFLOW = {"version": 0.4, "nodes": [{"id": 1, "type": "WanFlowSaveVideo"}], "links": []}


@pytest.fixture()
def out(tmp_path):
    ca.configure_headless(None, tmp_path / "input", tmp_path / "output")
    return tmp_path / "output"


def frames(n=5, h=32, w=48):
    ramp = torch.linspace(0, 1, n).view(n, 1, 1, 1)
    image = torch.zeros(n, h, w, 3)
    image[..., 0] = ramp[..., 0]
    image[..., 1] = torch.linspace(0, 1, w)
    return image


def save(fmt, images=None, prefix="WanFlow/test"):
    return WanFlowSaveVideo().save(frames() if images is None else images, prefix, fmt, 16.0, 90,
                                   prompt=PROMPT, extra_pnginfo={"workflow": WORKFLOW})


def test_mp4_round_trip(out):
    result = save("mp4")
    path = out / "WanFlow" / "test_00001_.mp4"
    assert result["ui"]["images"] == [{"filename": path.name, "subfolder": "WanFlow", "type": "output"}]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert float(stream.average_rate) == pytest.approx(16.0)
    assert len(decoded) == 5 and decoded[0].shape == (32, 48, 3)
    # The red ramp over time survives compression.
    assert decoded[0][..., 0].mean() < 40 and decoded[-1][..., 0].mean() > 215
    meta = read_video_metadata(path)
    assert meta == {"prompt": PROMPT, "workflow": WORKFLOW}


def test_webp_round_trip(out):
    save("webp")
    path = out / "WanFlow" / "test_00001_.webp"
    with Image.open(path) as image:
        assert image.n_frames == 5 and image.size == (48, 32)
        image.seek(1)
        image.load()
        assert image.info["duration"] == 62
    assert read_video_metadata(path) == {"prompt": PROMPT, "workflow": WORKFLOW}


def test_png_frames_round_trip(out):
    result = save("png", frames(3))
    names = [item["filename"] for item in result["ui"]["images"]]
    assert names == ["test_00001_.png", "test_00002_.png", "test_00003_.png"]
    last = np.asarray(Image.open(out / "WanFlow" / names[-1]))
    assert last.shape == (32, 48, 3) and last[..., 0].min() == 255
    assert read_video_metadata(out / "WanFlow" / names[0]) == {"prompt": PROMPT, "workflow": WORKFLOW}


def test_never_overwrites(out):
    save("mp4")
    save("mp4")
    assert sorted(p.name for p in (out / "WanFlow").iterdir()) == ["test_00001_.mp4", "test_00002_.mp4"]


def test_odd_size_mp4_is_padded(out):
    save("mp4", frames(2, 31, 45))
    with av.open(str(out / "WanFlow" / "test_00001_.mp4")) as container:
        assert (container.streams.video[0].width, container.streams.video[0].height) == (46, 32)


def test_bad_prefix_and_bad_images(out):
    with pytest.raises(ca.UnsafeFileName, match="filename_prefix"):
        save("mp4", prefix="../escape")
    with pytest.raises(ValueError, match=r"expected an IMAGE tensor"):
        save("mp4", torch.zeros(3, 8, 8))
    assert not out.exists() or not any(out.rglob("*.mp4"))


def test_prefix_is_validated_before_the_run(out):
    assert WanFlowSaveVideo.VALIDATE_INPUTS("WanFlow/video") is True
    assert WanFlowSaveVideo.VALIDATE_INPUTS(None) is True  # fed by a link: checked when the node runs
    for bad, why in (("../escape", "'..'"), ("/abs/video", "absolute path"), ("", "expected a file name")):
        with pytest.raises(ca.UnsafeFileName, match=f"save video: filename_prefix: .*{why}"):
            WanFlowSaveVideo.VALIDATE_INPUTS(bad)
    assert not out.exists()


def test_quality_to_crf():
    assert [quality_to_crf(q) for q in (100, 90, 1)] == [0, 19, 51]
