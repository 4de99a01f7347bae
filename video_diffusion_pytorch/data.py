"""Training data: a dataset of video clips, a dataset of still images, and the clip I/O.

`VideoDataset` serves clips of a fixed length and size from a folder of GIFs, video files
and folders of frames, with optional captions; `ImageDataset` serves single images for
joint image-video training (paper §3). Reading and writing clips lives in `video_io` and
is re-exported here, so `from video_diffusion_pytorch.data import gif_to_tensor` works.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch import Tensor
from torch.utils import data as torch_data

from .checks import check_int
from .video_io import (
    CHANNELS_TO_MODE,
    IMAGE_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ClipError,
    MissingVideoSupportError,
    channel_mode,
    convert_image,
    count_frames,
    frames_to_tensor,
    gif_to_tensor,
    is_frame_name,
    natural_sort_key,
    read_clip,
    reading,
    seek_all_images,
    supported_formats,
    video_tensor_to_gif,
    write_video,
)

__all__ = [
    "CHANNELS_TO_MODE", "IMAGE_EXTENSIONS", "SUPPORTED_EXTENSIONS", "VIDEO_EXTENSIONS", "SHORT_CLIP_POLICIES",
    "ClipError", "MissingVideoSupportError", "SkippedFilesWarning", "ImageDataset", "VideoDataset",
    "count_frames", "find_files", "frames_to_tensor", "gif_to_tensor", "read_captions",
    "read_clip", "seek_all_images", "video_tensor_to_gif", "write_video",
]  # fmt: skip

SHORT_CLIP_POLICIES = ("skip", "pad", "loop")
MIN_CLIP_FRAMES = 2  # one frame is a picture, not a video
MAX_NAMED_MISSING = 5  # captions: how many clips without one an error names


class SkippedFilesWarning(UserWarning):
    """Some files below a dataset folder were left out; the message names each and why."""


# ---------------------------------------------------------------- finding files


def _walk(folder: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """`os.walk` below `folder` without hidden entries (names starting with a dot)."""
    for directory, dirnames, filenames in os.walk(folder):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]  # prunes the walk too
        yield Path(directory), dirnames, [name for name in filenames if not name.startswith(".")]


def _dotted(exts: Iterable[str]) -> tuple[str, ...]:
    """Lower-case suffixes with their dot: ("gif", ".MP4") -> (".gif", ".mp4")."""
    return tuple(ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in exts)


def find_files(folder: str | os.PathLike, exts: Iterable[str], *, frame_folders: bool = False) -> list[Path]:
    """Everything below `folder` named with one of `exts`, in natural order (hidden entries skipped).

    With `frame_folders`, every folder holding numbered frame images is listed as well.
    Folders named like files of `exts` are listed too (and later fail to read), so that
    a misnamed entry is reported rather than silently ignored.
    """
    exts = _dotted(exts)
    found = set()
    for directory, dirnames, filenames in _walk(Path(folder)):
        found.update(directory / name for name in (*dirnames, *filenames) if Path(name).suffix.lower() in exts)
        if frame_folders and any(map(is_frame_name, filenames)):
            found.add(directory)
    return sorted(found, key=natural_sort_key)


def _existing_folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"dataset folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ValueError(f"expected a dataset folder, got the file {str(folder)!r}")
    return folder


def _sift(candidates: list[Path], probe: Callable[[Path], int]) -> tuple[list[tuple[Path, int]], list[str]]:
    """Probe each candidate: `(path, probe(path))` for the usable, the reasons for the rest."""
    usable, skipped = [], []
    for path in candidates:
        try:
            usable.append((path, probe(path)))
        except ClipError as error:
            skipped.append(str(error))
    return usable, skipped


def _check_usable(folder: Path, found: int, skipped: list[str], kind: str, formats: str) -> None:
    """Raise when nothing usable was found; warn once, naming every file, when some were left out."""
    if found == 0:
        raise ValueError(f"no {kind} found in {str(folder)!r}; supported: {formats}")
    listing = "\n".join(f"  {reason}" for reason in skipped)
    if len(skipped) == found:
        raise ValueError(
            f"no usable {kind} in {str(folder)!r}; all {found} found were left out:\n{listing}\nsupported: {formats}"
        )
    if skipped:
        message = f"left out {len(skipped)} of the {found} {kind} found in {str(folder)!r}:\n{listing}"
        warnings.warn(message, SkippedFilesWarning, stacklevel=3)


# ---------------------------------------------------------------- captions


def _caption_file(clip: Path) -> Path | None:
    """`clip.txt` beside a clip file; `folder.txt` beside or `caption.txt` inside a frame folder."""
    if not clip.is_dir():
        candidates = [clip.with_suffix(".txt")]
    else:
        candidates = [clip.parent / f"{clip.name}.txt", clip / "caption.txt"]
    present = [file for file in candidates if file.is_file()]
    if len(present) > 1:
        raise ValueError(f"the frame folder {str(clip)!r} has two captions, {present[0]} and {present[1]}; keep one")
    return present[0] if present else None


def _read_caption(file: Path) -> str:
    try:
        caption = file.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as error:
        raise ValueError(f"caption file {str(file)!r} is not UTF-8 text: {error}") from error
    if not caption:
        raise ValueError(f"caption file {str(file)!r} is empty")
    return caption


def read_captions(clips: list[Path]) -> list[str] | None:
    """One caption per clip (UTF-8 text, stripped), or None when no clip has a caption file.

    A clip's caption is `clip.txt` beside `clip.gif` (any clip suffix); for a frame
    folder, `folder.txt` beside it or `caption.txt` inside it. Raises a ValueError when
    only some clips have one, or a caption file is empty.
    """
    files = [_caption_file(clip) for clip in clips]
    missing = [str(clip) for clip, file in zip(clips, files) if file is None]
    if len(missing) == len(clips):
        return None
    if missing:
        named = ", ".join(missing[:MAX_NAMED_MISSING]) + (", ..." if len(missing) > MAX_NAMED_MISSING else "")
        raise ValueError(
            f"{len(missing)} of {len(clips)} clips have no caption file (clip.gif + clip.txt): {named}; "
            f"caption every clip, or none"
        )
    return [_read_caption(file) for file in files]


# ---------------------------------------------------------------- transforms


def frame_transform(image_size: int) -> T.Compose:
    """PIL frame -> `(c, image_size, image_size)` in [0, 1]: short side resized, centre crop."""
    return T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor()])


def random_horizontal_flip(x: Tensor) -> Tensor:
    """Mirror `x` (`(..., h, w)`: a whole clip at once) with probability 1/2, using torch's RNG."""
    return x.flip(-1) if torch.rand(()) < 0.5 else x


# ---------------------------------------------------------------- datasets


class ScannedDataset(torch_data.Dataset):
    """Files found below `folder` and sifted once (`paths`; `skipped` says what was left
    out and why). Damage that the scan cannot see is met when an item is first decoded:
    that file is left out from then on, with one `SkippedFilesWarning` naming it, and the
    next readable file is served in its place, so a long run never stops at one bad file."""

    def _scan(self, candidates: list[Path], probe: Callable[[Path], int], kind: str, formats: str) -> list[int]:
        """Keep the candidates that `probe` accepts (`paths`); returns their probe results."""
        usable, self.skipped = _sift(candidates, probe)
        _check_usable(self.folder, len(candidates), self.skipped, kind, formats)
        self.paths: list[Path] = [path for path, _ in usable]
        self.unreadable: set[int] = set()  # indices that failed to decode, in this process
        return [result for _, result in usable]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        """Item `index`, or the next readable one when its file fails to decode."""
        self.paths[index]  # an IndexError for an index out of range
        for offset in range(len(self.paths)):
            candidate = (index + offset) % len(self.paths)
            if candidate in self.unreadable:
                continue
            try:
                return self._read_item(candidate)
            except ClipError as error:
                self._leave_out(candidate, error)
        raise ValueError(
            f"none of the {len(self.paths)} files in {str(self.folder)!r} could be decoded:\n"
            + "\n".join(f"  {reason}" for reason in self.skipped)
        )

    def _read_item(self, index: int) -> Any:
        """Decode item `index`; a ClipError when its file cannot be decoded."""
        raise NotImplementedError

    def _leave_out(self, index: int, error: ClipError) -> None:
        """Mark a file that passed the scan but failed to decode (in this process)."""
        self.unreadable.add(index)
        self.skipped.append(str(error))
        message = f"left out a file of {str(self.folder)!r} that failed to decode; another is served in its place:\n  {error}"
        warnings.warn(message, SkippedFilesWarning, stacklevel=3)


class VideoDataset(ScannedDataset):
    """Clips below a folder as `(channels, num_frames, image_size, image_size)` tensors in [0, 1].

    Clips are `.gif` files (Pillow), `.mp4`/`.webm`/`.avi`/`.mov` files (PyAV, the
    `[video]` extra; a `MissingVideoSupportError` when it is needed and absent), and
    folders of numbered frame images (`frame_2.png` before `frame_10.png`), found
    recursively and sorted; hidden entries are skipped. Each frame is converted to the
    channel mode (1: L, 3: RGB, 4: RGBA), resized so its short side is `image_size`,
    centre-cropped square and scaled to [0, 1].

    Clips longer than `num_frames` give a random window of `num_frames` consecutive
    frames (a random temporal crop). Shorter clips follow `short_clips`:
    - "pad" (default, the original library's `Dataset`): black frames appended at the end;
    - "skip": left out (the `video-diffusion train` command's choice, see its module);
    - "loop": the clip repeated from its start.
    Unreadable files and one-frame clips are always left out. Everything left out is
    named, with the reason, in one `SkippedFilesWarning`; a folder with no usable clip
    is a ValueError listing the supported formats. The scan reads headers only, so a
    clip damaged further in is found when first decoded: it is left out from then on
    with one `SkippedFilesWarning` naming it, and the next readable clip is served in
    its place (training goes on, and a resumed run does not stop at it).

    With `horizontal_flip`, each clip is mirrored with probability 1/2, all its frames
    alike. Random choices use torch's RNG (so `torch.manual_seed` and DataLoader worker
    seeding govern them). Frame counts are read once, from headers, at construction;
    pixels are decoded per item and not cached.

    Captions: when every clip has a caption file (see `read_captions`), `captions` holds
    them and items are `(video, caption)` pairs; when none has, `captions` is None.

    Args:
        folder: the folder to search.
        image_size: side of the square frames served.
        channels: 1, 3 or 4.
        num_frames: frames per clip served.
        horizontal_flip: mirror clips at random.
        short_clips: "skip", "pad" or "loop", see above.
        exts: clip file suffixes to collect, a subset of `SUPPORTED_EXTENSIONS`.
        frame_folders: also collect folders of numbered frame images.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        image_size: int,
        channels: int = 3,
        num_frames: int = 16,
        *,
        horizontal_flip: bool = False,
        short_clips: str = "pad",
        exts: Iterable[str] = SUPPORTED_EXTENSIONS,
        frame_folders: bool = True,
    ):
        super().__init__()
        channel_mode(channels)
        check_int("image_size", image_size)
        check_int("num_frames", num_frames)
        if short_clips not in SHORT_CLIP_POLICIES:
            raise ValueError(f"short_clips must be one of {SHORT_CLIP_POLICIES}, got {short_clips!r}")
        self.exts = _dotted(exts)
        if unknown := sorted(set(self.exts) - set(SUPPORTED_EXTENSIONS)):
            raise ValueError(f"unsupported clip suffixes {unknown}; expected some of {SUPPORTED_EXTENSIONS}")
        self.folder = _existing_folder(folder)
        self.image_size, self.channels, self.num_frames = image_size, channels, num_frames
        self.horizontal_flip, self.short_clips = horizontal_flip, short_clips

        candidates = find_files(self.folder, self.exts, frame_folders=frame_folders)
        formats = supported_formats(self.exts, frame_folders)
        self.frame_counts: list[int] = self._scan(candidates, self._usable_length, "clips", formats)
        self.captions: list[str] | None = read_captions(self.paths)
        self.transform = frame_transform(image_size)

    def _usable_length(self, path: Path) -> int:
        """The clip's frame count, or a ClipError saying why it cannot be used."""
        length = count_frames(path)
        if length < MIN_CLIP_FRAMES:
            raise ClipError(f"{path}: {length} frame{'' if length == 1 else 's'}, not a video")
        if length < self.num_frames and self.short_clips == "skip":
            raise ClipError(f"{path}: {length} frames, fewer than num_frames={self.num_frames} (short_clips='skip')")
        return length

    def _read_item(self, index: int) -> Tensor | tuple[Tensor, str]:
        path, length = self.paths[index], self.frame_counts[index]
        start = int(torch.randint(0, length - self.num_frames + 1, ())) if length > self.num_frames else 0
        stop = start + min(length, self.num_frames)  # a random window of consecutive frames
        clip = read_clip(path, self.channels, start=start, stop=stop, transform=self.transform)
        clip = self._fit_length(clip)  # (c, num_frames, image_size, image_size)
        if self.horizontal_flip:
            clip = random_horizontal_flip(clip)
        return clip if self.captions is None else (clip, self.captions[index])

    def _fit_length(self, clip: Tensor) -> Tensor:
        """Bring a clip of at most `num_frames` frames to `num_frames` by the short-clip policy."""
        missing = self.num_frames - clip.shape[1]
        assert missing == 0 or self.short_clips != "skip", "short clips are left out at construction"
        if missing == 0:
            return clip
        if self.short_clips == "pad":
            return F.pad(clip, (0, 0, 0, 0, 0, missing))  # black frames at the end of the f axis
        return clip[:, torch.arange(self.num_frames) % clip.shape[1]]  # "loop": 0, 1, .., n-1, 0, 1, ..


class ImageDataset(ScannedDataset):
    """Images below a folder as `(channels, image_size, image_size)` tensors in [0, 1].

    For joint image-video training (paper §3): images are found recursively and sorted
    (hidden entries skipped), converted to the channel mode, resized so the short side is
    `image_size`, centre-cropped square, and mirrored at random with `horizontal_flip`
    (torch's RNG). Unreadable files are left out with one `SkippedFilesWarning` naming
    each; a folder with no usable image is a ValueError.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        image_size: int,
        channels: int = 3,
        *,
        horizontal_flip: bool = False,
        exts: Iterable[str] = IMAGE_EXTENSIONS,
    ):
        super().__init__()
        self.mode = channel_mode(channels)
        check_int("image_size", image_size)
        self.folder = _existing_folder(folder)
        self.image_size, self.channels, self.horizontal_flip = image_size, channels, horizontal_flip
        self.exts = _dotted(exts)

        self._scan(find_files(self.folder, self.exts), _probe_image, "images", f"{', '.join(self.exts)} files")
        self.transform = frame_transform(image_size)

    def _read_item(self, index: int) -> Tensor:
        path = self.paths[index]
        with reading(path), Image.open(path) as image:
            frame = self.transform(convert_image(image, self.channels))  # (c, image_size, image_size)
        return random_horizontal_flip(frame) if self.horizontal_flip else frame


def _probe_image(path: Path) -> int:
    """1 when `path` opens as an image (its header only), else a ClipError saying why."""
    with reading(path), Image.open(path):
        return 1
