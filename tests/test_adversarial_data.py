"""Bad data: damaged clips, repeated frames, 16-bit frames, bad values and long prompts.

Each case asserts the exact outcome: what is read back, what is left out (and named in
one warning), or which error names what was expected and what came.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_training import FRAMES, SIZE, make_clips, make_diffusion, make_trainer, single_thread  # noqa: F401
from video_diffusion_pytorch.data import (
    ClipError,
    ImageDataset,
    SkippedFilesWarning,
    VideoDataset,
    count_frames,
    read_clip,
    video_tensor_to_gif,
    write_video,
)
from video_diffusion_pytorch.synthetic import moving_shapes


def clip_with_repeats(channels=3, num_frames=5, size=16):
    """A (c, f, h, w) clip whose frames 1, 2 and 3 are equal, in exact uint8 steps."""
    clip = moving_shapes(1, num_frames=num_frames, image_size=size, channels=channels,
                         generator=torch.Generator().manual_seed(0))[0]  # fmt: skip
    clip[:, 2] = clip[:, 3] = clip[:, 1]
    if channels == 4:
        clip[3] = (clip[0] > 0.3).float()  # GIF transparency is on/off
    return (clip * 255).round() / 255


def write_frame_folder(folder, clip):
    folder.mkdir(parents=True)
    for index, frame in enumerate(clip.unbind(dim=1)):
        pixels = (frame * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"frame{index}.png")


def recorded(function, *args, **kwargs):
    """`function(*args, **kwargs)` and the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    return result, [str(warning.message) for warning in caught]


# ---------------------------------------------------------------- exact round trips


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_gif_keeps_repeated_frames_exactly(tmp_path, channels):
    clip = clip_with_repeats(channels)
    video_tensor_to_gif(clip, tmp_path / "clip.gif")
    back = read_clip(tmp_path / "clip.gif", channels)
    assert count_frames(tmp_path / "clip.gif") == 5
    if channels == 4:
        visible = clip[3:] > 0
        assert torch.equal(back[3:], clip[3:]) and torch.equal(back[:3] * visible, clip[:3] * visible)
    else:
        assert torch.equal(back, clip)


def test_gif_of_identical_frames_keeps_every_frame(tmp_path):
    clip = torch.full((3, 6, 8, 8), 0.4).round_()  # six black frames, all equal
    write_video(clip, tmp_path / "still.gif")
    assert count_frames(tmp_path / "still.gif") == 6
    assert torch.equal(read_clip(tmp_path / "still.gif"), clip)


@pytest.mark.parametrize("suffix", [".gif", ".mp4", ".webm"])
def test_write_then_read_keeps_the_frame_count(tmp_path, suffix):
    if suffix != ".gif":
        pytest.importorskip("av")
    clip = clip_with_repeats()
    write_video(clip, tmp_path / f"clip{suffix}")
    back = read_clip(tmp_path / f"clip{suffix}")
    assert count_frames(tmp_path / f"clip{suffix}") == 5 and back.shape == clip.shape
    if suffix == ".gif":
        assert torch.equal(back, clip)


def test_dataset_keeps_a_clip_with_repeated_frames(tmp_path):
    video_tensor_to_gif(clip_with_repeats(), tmp_path / "clip.gif")
    dataset, caught = recorded(VideoDataset, tmp_path, image_size=16, num_frames=5)
    assert caught == [] and dataset.frame_counts == [5]
    assert torch.equal(dataset[0], clip_with_repeats())


def test_sixteen_bit_png_frames_keep_their_brightness(tmp_path):
    values = (np.arange(4 * 8 * 8).reshape(4, 8, 8) * 257).astype(np.uint16)  # 0..255 in 16 bits
    (tmp_path / "clip").mkdir()
    for index, frame in enumerate(values):
        Image.fromarray(frame).save(tmp_path / "clip" / f"{index}.png")
    assert Image.open(tmp_path / "clip" / "0.png").mode == "I;16"

    expected = torch.from_numpy(values / 257 / 255).float()  # (f, h, w)
    for channels in (1, 3):
        clip = read_clip(tmp_path / "clip", channels)
        assert clip.shape == (channels, 4, 8, 8)
        torch.testing.assert_close(clip, expected.expand(channels, -1, -1, -1), atol=0, rtol=0)
    image = ImageDataset(tmp_path / "clip", image_size=8, channels=1)[0]
    torch.testing.assert_close(image[0], expected[0], atol=0, rtol=0)


# ---------------------------------------------------------------- damaged clips


def test_no_cut_of_a_gif_stops_the_scan(tmp_path):
    video_tensor_to_gif(clip_with_repeats(num_frames=4, size=8), tmp_path / "good.gif")
    data = (tmp_path / "good.gif").read_bytes()
    for cut in range(1, len(data), 3):
        (tmp_path / "cut.gif").write_bytes(data[:cut])
        dataset, caught = recorded(VideoDataset, tmp_path, image_size=8, num_frames=4)
        for index in range(len(dataset)):  # reading every item never raises either
            assert recorded(dataset.__getitem__, index)[0].shape == (3, 4, 8, 8)
        named = [message for message in caught if "cut.gif" in message]
        assert len(named) <= 1, (cut, named)  # at most one warning names it


def test_a_clip_that_fails_when_first_read_is_replaced_with_one_warning(tmp_path):
    clips = make_clips(2)
    write_frame_folder(tmp_path / "a", clips[0])
    write_frame_folder(tmp_path / "b", clips[1])
    (tmp_path / "a" / "frame1.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")  # the scan counts files only
    dataset, caught = recorded(VideoDataset, tmp_path, image_size=SIZE, num_frames=FRAMES)
    assert caught == [] and len(dataset) == 2

    item, caught = recorded(dataset.__getitem__, 0)
    assert len(caught) == 1 and "a:" in caught[0] and "failed to decode" in caught[0]
    assert torch.equal(item, read_clip(tmp_path / "b", transform=dataset.transform))  # the next clip
    again, caught = recorded(dataset.__getitem__, 0)
    assert caught == [] and torch.equal(again, item)  # left out from then on, silently
    assert dataset.unreadable == {0} and len(dataset.skipped) == 1 and str(tmp_path / "a") in dataset.skipped[0]


def test_every_clip_failing_when_read_is_one_error_naming_each(tmp_path):
    for name in ("a", "b"):
        write_frame_folder(tmp_path / name, make_clips(1)[0])
        (tmp_path / name / "frame0.png").write_bytes(b"")
    dataset = VideoDataset(tmp_path, image_size=SIZE, num_frames=FRAMES)
    with pytest.warns(SkippedFilesWarning), pytest.raises(ValueError, match=r"(?s)none of the 2 files.*b: cannot identify.*a: cannot identify"):
        dataset[1]


def test_an_image_that_fails_when_read_is_replaced(tmp_path):
    for name, value in (("a.png", 50), ("b.png", 200)):
        Image.new("L", (8, 8), value).save(tmp_path / name)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[:45])  # the header whole, the pixels cut short
    dataset, caught = recorded(ImageDataset, tmp_path, image_size=8, channels=1)
    assert caught == [] and len(dataset) == 2
    image, caught = recorded(dataset.__getitem__, 0)
    assert len(caught) == 1 and "a.png" in caught[0]
    assert torch.equal(image, torch.full((1, 8, 8), 200 / 255))


def test_training_goes_on_past_a_damaged_clip_and_resumes(tmp_path):
    clips = make_clips(3)
    for index, clip in enumerate(clips):
        write_frame_folder(tmp_path / "clips" / f"c{index}", clip)
    (tmp_path / "clips" / "c1" / "frame2.png").write_bytes(b"garbage")
    with pytest.warns(SkippedFilesWarning, match="c1"):
        trainer = make_trainer(tmp_path / "results", data=str(tmp_path / "clips"), train_num_steps=2,
                               save_and_sample_every=2, short_clips="skip")  # fmt: skip
        trainer.train()
    assert trainer.step == 2 and (tmp_path / "results" / "model-1.pt").exists()

    resumed = make_trainer(tmp_path / "results", data=str(tmp_path / "clips"), train_num_steps=4,
                           save_and_sample_every=2, short_clips="skip")  # fmt: skip
    resumed.load()
    with pytest.warns(SkippedFilesWarning, match="c1"):
        resumed.train()
    assert resumed.step == 4


# ---------------------------------------------------------------- bad values from a dataset


@pytest.mark.parametrize(
    "videos, error, message",
    [
        (make_clips(5) * 255, ValueError, r"first video must hold values in \[0, 1\], got values from .* to 2\d\d.*divide"),
        (make_clips(5) * 2 - 1, ValueError, r"values from -0\.\d+ to .*\(x \+ 1\) / 2"),
        ((make_clips(5) * 255).round().to(torch.uint8), TypeError, r"floating point .* got dtype torch\.uint8"),
        (make_clips(5).index_fill(0, torch.tensor([0]), float("nan")), ValueError, r"first video holds \d+ NaN or infinite"),
        (make_clips(5).index_fill(0, torch.tensor([0]), float("inf")), ValueError, r"NaN or infinite values among"),
    ],
    ids=["0-255", "minus-one-to-one", "uint8", "nan", "inf"],
)
def test_bad_values_in_the_first_item_stop_the_trainer_at_construction(tmp_path, videos, error, message):
    with pytest.raises(error, match=message):
        make_trainer(tmp_path / "results", data=videos)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_a_nan_video_later_in_the_data_stops_training_before_the_device(tmp_path):
    videos = make_clips(5)
    videos[3, 0, 0, 0, 0] = float("nan")
    trainer = make_trainer(tmp_path / "results", data=videos, train_num_steps=6, train_batch_size=5,
                           gradient_accumulate_every=1, save_and_sample_every=1)  # fmt: skip
    with pytest.raises(ValueError, match=r"batch at stream position 0: videos holds 1 NaN or infinite value"):
        trainer.train()
    assert trainer.step == 0 and not list((tmp_path / "results").glob("model-*.pt"))


def test_an_infinite_condition_vector_stops_training(tmp_path):
    videos, conds = make_clips(4), torch.randn(4, 6)
    conds[2, 1] = float("inf")
    data = torch.utils.data.TensorDataset(videos, conds)
    trainer = make_trainer(tmp_path / "results", make_diffusion(cond_dim=6), data=data, train_batch_size=4,
                           gradient_accumulate_every=1)  # fmt: skip
    with pytest.raises(ValueError, match=r"batch at stream position 0: cond holds 1 NaN or infinite value"):
        trainer.train()


# ---------------------------------------------------------------- prompts


def test_a_prompt_longer_than_bert_takes_is_cut_with_a_warning(tiny_bert):
    from video_diffusion_pytorch.text import embed_texts, max_text_length, tokenize

    limit = max_text_length()
    assert limit == 64  # the tiny BERT's position embeddings
    long = "a whale " * 200
    ids, caught = recorded(tokenize, ["red square", long])
    assert ids.shape == (2, limit) and len(caught) == 1 and f"cut to BERT's {limit} tokens" in caught[0]
    assert recorded(tokenize, ["red square"])[1] == []
    embeddings, _ = recorded(embed_texts, [long])
    assert embeddings.shape == (1, 768) and torch.isfinite(embeddings).all()


def test_token_ids_longer_than_bert_takes_are_refused(tiny_bert):
    from video_diffusion_pytorch.text import bert_embed, tokenize

    with pytest.raises(ValueError, match=r"at most 64 tokens, got \(1, 65\)"):
        bert_embed(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one text, got an empty list"):
        tokenize([])


# ---------------------------------------------------------------- unreadable files, empty folders, bad arguments


def test_an_unreadable_clip_is_left_out_with_a_warning_naming_it(tmp_path, monkeypatch):
    for name in ("a", "b"):
        video_tensor_to_gif(clip_with_repeats(num_frames=4, size=8), tmp_path / f"{name}.gif")
    original_open = Image.open

    def denied(path, *args, **kwargs):
        if str(path).endswith("b.gif"):
            raise PermissionError(13, "Permission denied", str(path))
        return original_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", denied)
    with pytest.warns(SkippedFilesWarning, match=r"left out 1 of the 2 clips(?s:.*)b\.gif: \[Errno 13\] Permission denied"):
        dataset = VideoDataset(tmp_path, image_size=8, num_frames=4)
    assert [path.name for path in dataset.paths] == ["a.gif"]


@pytest.mark.parametrize("layout", ["empty-subfolders", "hidden-only", "captions-only"])
def test_a_folder_without_clips_is_one_error_listing_the_formats(tmp_path, layout):
    if layout == "empty-subfolders":
        (tmp_path / "x" / "y").mkdir(parents=True)
    elif layout == "hidden-only":
        (tmp_path / ".cache").mkdir()
        video_tensor_to_gif(clip_with_repeats(), tmp_path / ".cache" / "clip.gif")
        video_tensor_to_gif(clip_with_repeats(), tmp_path / ".clip.gif")
    else:
        (tmp_path / "clip.txt").write_text("a caption without its clip")
    with pytest.raises(ValueError, match=r"no clips found in .*; supported: \.gif, \.mp4"):
        VideoDataset(tmp_path, image_size=8)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(image_size=8.5), TypeError, r"image_size must be an integer, at least 1, got 8\.5 \(float\)"),
        (dict(image_size=0), ValueError, r"image_size must be at least 1, got 0"),
        (dict(image_size=8, num_frames="4"), TypeError, r"num_frames must be an integer, at least 1, got '4' \(str\)"),
        (dict(image_size=8, channels=True), ValueError, r"channels must be one of \[1, 3, 4\], got True"),
    ],
)
def test_bad_dataset_arguments_name_the_argument(tmp_path, kwargs, error, message):
    video_tensor_to_gif(clip_with_repeats(), tmp_path / "clip.gif")
    with pytest.raises(error, match=message):
        VideoDataset(tmp_path, **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(num_clips=-1), ValueError, r"num_clips must be at least 0, got -1"),
        (dict(num_clips=2, num_frames=0), ValueError, r"num_frames must be at least 1, got 0"),
        (dict(num_clips=2, shape_size=float("nan")), ValueError, r"shape_size must be a finite number in \[0, 1\], got nan"),
    ],
)
def test_bad_synthetic_arguments_name_the_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        moving_shapes(**kwargs)


@pytest.mark.parametrize("fps, error", [(0, ValueError), (float("inf"), ValueError), ("8", TypeError)])
def test_a_bad_frame_rate_writes_nothing(tmp_path, fps, error):
    with pytest.raises(error, match="fps must be"):
        write_video(clip_with_repeats(), tmp_path / "clip.gif", fps=fps)
    assert list(tmp_path.iterdir()) == []


def test_a_clip_with_nan_is_not_written_as_black_frames(tmp_path):
    clip = clip_with_repeats()
    clip[0, 1, 2, 3] = float("nan")
    for name in ("clip.gif", "clip.mp4"):
        with pytest.raises(ValueError, match="the clip to write holds 1 NaN or infinite value among 3840"):
            write_video(clip, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_loading_bert_leaves_torch_device_contexts_working(tiny_bert_path):
    """transformers swaps torch.linspace while it builds BERT; loading it first in a fresh
    process must not stop `with torch.device(...)` from placing torch.linspace afterwards."""
    code = (
        "import torch\n"
        "from video_diffusion_pytorch.text import get_bert\n"
        "get_bert()\n"
        "with torch.device('meta'):\n"
        "    print(torch.linspace(0, 1, 3).device)\n"
    )
    env = {**os.environ, "VIDEO_DIFFUSION_BERT_MODEL": str(tiny_bert_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "meta"


def test_a_frame_folder_of_mixed_sizes_is_one_error_naming_it(tmp_path):
    (tmp_path / "clip").mkdir()
    for index, size in enumerate((8, 8, 12)):
        Image.new("RGB", (size, size), (index * 40,) * 3).save(tmp_path / "clip" / f"{index}.png")
    with pytest.raises(ClipError, match=r"clip: the frames differ in size: frame 0 is \(3, 8, 8\), frame 2 \(3, 12, 12\)"):
        read_clip(tmp_path / "clip")
    dataset, caught = recorded(VideoDataset, tmp_path, image_size=8, num_frames=3)
    assert caught == [] and dataset[0].shape == (3, 3, 8, 8)  # resized to one size, the clip is usable
