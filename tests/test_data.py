"""Clip reading and writing (GIF, video files, frame folders) and the training datasets."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from video_diffusion_pytorch.data import (
    ClipError,
    ImageDataset,
    MissingVideoSupportError,
    SkippedFilesWarning,
    VideoDataset,
    count_frames,
    gif_to_tensor,
    read_clip,
    video_tensor_to_gif,
    write_video,
)
from video_diffusion_pytorch.synthetic import moving_shapes

LEVEL = 20 / 255  # frame k of a numbered clip is k * LEVEL: exact in uint8, GIF-safe


def shapes_clip(num_frames: int = 5, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """One moving-shapes clip, (c, f, h, w) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return moving_shapes(1, num_frames=num_frames, image_size=size, channels=channels, generator=generator)[0]


def numbered_clip(num_frames: int, height: int = 8, width: int = 8) -> torch.Tensor:
    """Frames whose right half is k * LEVEL (frame k) and left half white: order and flips are visible."""
    clip = (torch.arange(num_frames) * LEVEL).view(1, num_frames, 1, 1).expand(3, -1, height, width).clone()
    clip[..., : width // 2] = 1.0
    return clip


def frame_ids(clip: torch.Tensor) -> list[int]:
    """Which numbered frames a (c, f, h, w) clip holds, read from its darker half."""
    darker = torch.minimum(clip[..., 0], clip[..., -1])  # (c, f, h): the non-white column
    return [round(value / LEVEL) for value in darker.mean(dim=(0, 2)).tolist()]


def is_flipped(clip: torch.Tensor) -> list[bool]:
    """Per frame of a numbered clip: is the white half on the right?"""
    return [bool(flag) for flag in clip[0, :, :, -1].mean(dim=-1) > clip[0, :, :, 0].mean(dim=-1)]


def write_frames(folder: Path, clip: torch.Tensor, names: list[str]) -> None:
    folder.mkdir(parents=True)
    for frame, name in zip(clip.unbind(dim=1), names):
        Image.fromarray((frame * 255).round().byte().permute(1, 2, 0).numpy()).save(folder / name)


def quiet_dataset(*args, **kwargs) -> VideoDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedFilesWarning)  # these folders must need no skipping
        return VideoDataset(*args, **kwargs)


# ---------------------------------------------------------------- GIF


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_gif_round_trip_keeps_frames_within_uint8_rounding(tmp_path, channels):
    clip = shapes_clip(channels=channels)
    if channels == 4:
        clip[3] = (clip[0] > 0.3).float()  # GIF transparency is on/off
    path = tmp_path / "clip.gif"
    images = video_tensor_to_gif(clip, path)

    assert [image.mode for image in images] == [{1: "L", 3: "RGB", 4: "RGBA"}[channels]] * 5
    visible = clip[3:] > 0 if channels == 4 else torch.ones_like(clip[:1], dtype=torch.bool)
    for back in (gif_to_tensor(path, channels=channels), read_clip(path, channels=channels)):
        assert back.shape == clip.shape
        error = (back - clip).abs()
        assert (error * visible).max() <= 0.5 / 255 + 1e-6  # a transparent pixel has no colour
        assert torch.equal(back[3:], clip[3:])  # alpha, when present, exactly


def test_gif_frame_duration_is_honoured(tmp_path):
    video_tensor_to_gif(shapes_clip(), tmp_path / "a.gif", duration=70)
    write_video(shapes_clip(), tmp_path / "b.gif", fps=10)
    for name, expected in (("a.gif", 70), ("b.gif", 100)):
        with Image.open(tmp_path / name) as image:
            durations = []
            for index in range(image.n_frames):
                image.seek(index)
                durations.append(image.info["duration"])
        assert durations == [expected] * 5


def test_gif_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "clip.gif"
    video_tensor_to_gif(shapes_clip(seed=1), path)
    before = path.read_bytes()

    def failing_save(image, file, *args, **kwargs):
        Path(file).write_bytes(b"half a GIF")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        video_tensor_to_gif(shapes_clip(seed=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.gif"]  # no temporary file left behind


def test_writers_reject_bad_clips(tmp_path):
    with pytest.raises(ValueError, match=r"got \(2, 5, 16, 16\)"):
        video_tensor_to_gif(torch.rand(2, 5, 16, 16), tmp_path / "a.gif")
    with pytest.raises(ValueError, match=r"got \(3, 16, 16\)"):
        write_video(torch.rand(3, 16, 16), tmp_path / "a.gif")
    with pytest.raises(ValueError, match="suffix"):
        write_video(shapes_clip(), tmp_path / "a.mkv")
    with pytest.raises(ValueError, match=r"expected \.gif, \.mp4"):
        read_clip(tmp_path / "a.mkv")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- video files and frame folders


@pytest.mark.parametrize("suffix, channels, size", [(".mp4", 3, 16), (".mp4", 1, 15), (".webm", 3, 16)])
def test_video_file_round_trip(tmp_path, suffix, channels, size):
    pytest.importorskip("av")
    clip = shapes_clip(num_frames=6, size=size, channels=channels)
    path = tmp_path / f"clip{suffix}"
    write_video(clip, path, fps=8)

    assert count_frames(path) == 6
    back = read_clip(path, channels=channels)
    assert back.shape == clip.shape
    assert (back - clip).abs().mean() < 0.04  # lossy codec: loose tolerance
    assert read_clip(path, channels=channels, start=2, stop=5).shape[1] == 3
    with pytest.raises(ValueError, match="keep no alpha"):
        write_video(shapes_clip(channels=4), tmp_path / "rgba.mp4")


def test_missing_pyav_is_a_clear_error(tmp_path, monkeypatch):
    video_tensor_to_gif(shapes_clip(), tmp_path / "clip.gif")
    (tmp_path / "clip.mp4").write_bytes(b"not decoded anyway")
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now fails

    for attempt in (
        lambda: read_clip(tmp_path / "clip.mp4"),
        lambda: write_video(shapes_clip(), tmp_path / "out.mp4"),
        lambda: VideoDataset(tmp_path, 8, num_frames=4),
    ):
        with pytest.raises(MissingVideoSupportError, match=r"pip install 'video-diffusion-pytorch\[video\]'"):
            attempt()
    assert not (tmp_path / "out.mp4").exists()
    assert len(VideoDataset(tmp_path, 8, num_frames=4, exts=(".gif",))) == 1  # GIFs need no PyAV


def test_frame_folder_is_read_in_numeric_order(tmp_path):
    clip = numbered_clip(12)
    names = [f"frame{k}.png" for k in range(12)]  # frame10 sorts before frame2 as text
    write_frames(tmp_path / "clip", clip, names)
    (tmp_path / "clip" / "notes.png").write_bytes(b"no number: not a frame")

    assert count_frames(tmp_path / "clip") == 12
    assert frame_ids(read_clip(tmp_path / "clip")) == list(range(12))
    assert frame_ids(read_clip(tmp_path / "clip", start=9, stop=12)) == [9, 10, 11]
    with pytest.raises(ClipError, match="asked for"):
        read_clip(tmp_path / "clip", start=10, stop=14)


# ---------------------------------------------------------------- VideoDataset


def test_frames_are_resized_and_centre_cropped(tmp_path):
    clip = shapes_clip(num_frames=4, size=24)[..., 6:18, :]  # (3, 4, 12, 24): wide frames
    video_tensor_to_gif(clip, tmp_path / "wide.gif")

    same_size = quiet_dataset(tmp_path, image_size=12, num_frames=4)[0]
    assert (same_size - clip[..., 6:18]).abs().max() <= 0.5 / 255 + 1e-6  # the centre square
    assert quiet_dataset(tmp_path, image_size=6, channels=1, num_frames=4)[0].shape == (1, 4, 6, 6)


def test_random_temporal_crop_varies_the_start_and_keeps_frames_consecutive(tmp_path):
    video_tensor_to_gif(numbered_clip(10), tmp_path / "clip.gif")
    dataset = quiet_dataset(tmp_path, image_size=8, num_frames=4)

    starts = []
    for seed in range(12):
        torch.manual_seed(seed)
        ids = frame_ids(dataset[0])
        assert ids == list(range(ids[0], ids[0] + 4))
        starts.append(ids[0])
    assert len(set(starts)) >= 3 and 0 <= min(starts) and max(starts) <= 6
    torch.manual_seed(3)
    assert frame_ids(dataset[0])[0] == starts[3]  # torch's RNG governs the choice


def test_horizontal_flip_is_decided_per_clip(tmp_path):
    video_tensor_to_gif(numbered_clip(6), tmp_path / "clip.gif")
    dataset = quiet_dataset(tmp_path, image_size=8, num_frames=6, horizontal_flip=True)
    outcomes = set()
    for seed in range(10):
        torch.manual_seed(seed)
        flips = is_flipped(dataset[0])
        assert len(set(flips)) == 1  # every frame flipped, or none
        outcomes.add(flips[0])
    assert outcomes == {True, False}
    assert set(is_flipped(quiet_dataset(tmp_path, image_size=8, num_frames=6)[0])) == {False}


@pytest.mark.parametrize(
    "policy, expected", [("skip", None), ("pad", [0, 1, 2, 0, 0]), ("loop", [0, 1, 2, 0, 1])]
)
def test_short_clip_policies(tmp_path, policy, expected):
    video_tensor_to_gif(numbered_clip(3), tmp_path / "short.gif")
    video_tensor_to_gif(numbered_clip(7), tmp_path / "long.gif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = VideoDataset(tmp_path, image_size=8, num_frames=5, short_clips=policy)

    if policy == "skip":
        assert [path.name for path in dataset.paths] == ["long.gif"]
        assert len(caught) == 1 and "short.gif: 3 frames, fewer than num_frames=5" in str(caught[0].message)
        return
    assert caught == [] and [path.name for path in dataset.paths] == ["long.gif", "short.gif"]
    video = dataset[1]
    assert video.shape == (3, 5, 8, 8)
    if policy == "pad":
        assert frame_ids(video[:, :3]) == expected[:3] and video[:, 3:].abs().max() == 0  # black frames
    else:
        assert frame_ids(video) == expected


def test_captions_beside_every_clip(tmp_path):
    video_tensor_to_gif(shapes_clip(), tmp_path / "a.gif")
    (tmp_path / "a.txt").write_text("  a red square glides left\n", encoding="utf-8")
    write_frames(tmp_path / "b", shapes_clip(), [f"{k}.png" for k in range(5)])
    (tmp_path / "b.txt").write_text("une balle qui rebondit", encoding="utf-8")
    write_frames(tmp_path / "c", shapes_clip(), [f"{k}.png" for k in range(5)])
    (tmp_path / "c" / "caption.txt").write_text("a disc", encoding="utf-8")

    dataset = quiet_dataset(tmp_path, image_size=8, num_frames=4)
    assert dataset.captions == ["a red square glides left", "une balle qui rebondit", "a disc"]
    video, caption = dataset[1]
    assert video.shape == (3, 4, 8, 8) and caption == "une balle qui rebondit"
    videos, captions = next(iter(DataLoader(dataset, batch_size=3)))
    assert videos.shape == (3, 3, 4, 8, 8) and list(captions) == dataset.captions


def test_no_captions_gives_plain_tensors(tmp_path):
    video_tensor_to_gif(shapes_clip(), tmp_path / "a.gif")
    dataset = quiet_dataset(tmp_path, image_size=8, num_frames=4)
    assert dataset.captions is None and isinstance(dataset[0], torch.Tensor)


def test_caption_errors(tmp_path):
    for name in ("a", "b", "c"):
        video_tensor_to_gif(shapes_clip(), tmp_path / f"{name}.gif")
    (tmp_path / "a.txt").write_text("a caption", encoding="utf-8")
    with pytest.raises(ValueError, match=r"2 of 3 clips have no caption file.*b\.gif.*c\.gif"):
        VideoDataset(tmp_path, image_size=8, num_frames=4)

    (tmp_path / "b.txt").write_text("another", encoding="utf-8")
    (tmp_path / "c.txt").write_text(" \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"c\.txt' is empty"):
        VideoDataset(tmp_path, image_size=8, num_frames=4)


def test_folder_is_searched_recursively_and_sorted(tmp_path):
    for relative in ("clip10.gif", "clip2.gif", "x/y/deep.gif", ".hidden/secret.gif"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        video_tensor_to_gif(shapes_clip(), tmp_path / relative)
    write_frames(tmp_path / "x" / "frames", shapes_clip(), [f"{k}.png" for k in range(5)])

    dataset = quiet_dataset(tmp_path, image_size=8, num_frames=4, exts=["gif"])  # the original's style
    names = [path.relative_to(tmp_path).as_posix() for path in dataset.paths]
    assert names == ["clip2.gif", "clip10.gif", "x/frames", "x/y/deep.gif"]
    assert all(dataset[index].shape == (3, 4, 8, 8) for index in range(len(dataset)))


# ---------------------------------------------------------------- bad folders


def test_missing_or_empty_folder_is_an_error_listing_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoDataset(tmp_path / "nowhere", image_size=8)
    with pytest.raises(ValueError, match=r"no clips found.*\.gif, \.mp4, \.webm, \.avi, \.mov.*frame images"):
        VideoDataset(tmp_path, image_size=8)
    (tmp_path / "file.gif").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a dataset folder"):
        VideoDataset(tmp_path / "file.gif", image_size=8)


def test_folder_with_only_unsupported_files_is_an_error(tmp_path):
    (tmp_path / "movie.mkv").write_bytes(b"matroska")
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "cover.png").write_bytes(b"an image without a number is no frame")
    with pytest.raises(ValueError, match=r"no clips found.*supported: \.gif"):
        VideoDataset(tmp_path, image_size=8)


def test_bad_clips_are_skipped_with_one_warning_naming_each(tmp_path):
    video_tensor_to_gif(shapes_clip(), tmp_path / "good.gif")
    (tmp_path / "corrupt.gif").write_bytes(b"GIF89a" + bytes(range(40)))
    good = (tmp_path / "good.gif").read_bytes()
    (tmp_path / "truncated.gif").write_bytes(good[: len(good) // 2])
    video_tensor_to_gif(shapes_clip(num_frames=1), tmp_path / "still.gif")
    (tmp_path / "folder.gif").mkdir()  # unreadable: a directory named like a clip

    with pytest.warns(SkippedFilesWarning) as caught:
        dataset = VideoDataset(tmp_path, image_size=8, num_frames=4)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "left out 4 of the 5 clips" in message
    for name in ("corrupt.gif", "truncated.gif", "folder.gif"):
        assert f"{name}:" in message
    assert "still.gif: 1 frame, not a video" in message
    assert [path.name for path in dataset.paths] == ["good.gif"]
    assert len(dataset.skipped) == 4


def test_folder_of_only_bad_clips_is_an_error(tmp_path):
    (tmp_path / "corrupt.gif").write_bytes(b"not a gif")
    video_tensor_to_gif(shapes_clip(num_frames=1), tmp_path / "still.gif")
    with pytest.raises(ValueError, match=r"(?s)no usable clips.*corrupt\.gif.*still\.gif: 1 frame.*supported: \.gif"):
        VideoDataset(tmp_path, image_size=8, num_frames=4)


def test_bad_arguments_are_refused(tmp_path):
    video_tensor_to_gif(shapes_clip(), tmp_path / "a.gif")
    with pytest.raises(ValueError, match="channels must be one of"):
        VideoDataset(tmp_path, image_size=8, channels=2)
    with pytest.raises(ValueError, match="short_clips must be one of"):
        VideoDataset(tmp_path, image_size=8, short_clips="stretch")
    with pytest.raises(ValueError, match="unsupported clip suffixes"):
        VideoDataset(tmp_path, image_size=8, exts=(".mkv",))


# ---------------------------------------------------------------- ImageDataset


def test_image_dataset(tmp_path):
    write_frames(tmp_path / "a", numbered_clip(2, height=8, width=12), ["one.png", "two.jpg"])
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(SkippedFilesWarning, match="broken.png"):
        dataset = ImageDataset(tmp_path, image_size=6, channels=1, horizontal_flip=True)

    assert [path.name for path in dataset.paths] == ["one.png", "two.jpg"]
    assert dataset[0].shape == (1, 6, 6) and 0 <= dataset[1].min() and dataset[1].max() <= 1
    flips = set()
    for seed in range(8):
        torch.manual_seed(seed)
        image = dataset[0]
        flips.add(bool(image[0, :, -1].mean() > image[0, :, 0].mean()))
    assert flips == {True, False}
    with pytest.raises(ValueError, match=r"no images found.*supported: \.bmp"):
        ImageDataset(tmp_path / "a", image_size=6, exts=(".bmp",))
