"""Reading and writing clips: GIFs (Pillow), video files (PyAV) and folders of frames.

Every format is read as a sequence of PIL images in the requested channel mode, and one
function (`frames_to_tensor`) turns such a sequence into a clip tensor, so the formats
differ only in how frames are found. Clips are `(channels, frames, height, width)` tensors
in [0, 1]. PyAV is optional (the `[video]` extra) and imported only when a video file is
read or written. Writers are atomic: a file appears complete or not at all.
"""

from __future__ import annotations

import os
import re
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import GifImagePlugin, Image, ImageSequence
from torch import Tensor

from .checks import check_finite, check_number
from .files import atomic_path

CHANNELS_TO_MODE = {1: "L", 3: "RGB", 4: "RGBA"}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # how Pillow opens 16-bit grey images
GIF_EXTENSION = ".gif"
GIF_TRAILER = b";"
GIF_TRANSPARENT_INDEX = 255  # the palette entry of transparent pixels in frames with alpha
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov")  # need PyAV: the [video] extra
SUPPORTED_EXTENSIONS = (GIF_EXTENSION, *VIDEO_EXTENSIONS)  # frame folders are accepted too
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_EXTRA_INSTALL = "pip install 'video-diffusion-pytorch[video]'"

# container and encoders (first usable wins) for each video suffix we write
VIDEO_WRITERS = {
    ".mp4": ("mp4", ("libx264", "mpeg4")),
    ".mov": ("mov", ("libx264", "mpeg4")),
    ".avi": ("avi", ("mpeg4",)),
    ".webm": ("webm", ("libvpx-vp9", "libvpx")),
}
BITS_PER_PIXEL = 2  # encoder bit rate: enough for small frames to survive with little loss


class MissingVideoSupportError(ImportError):
    """A video file needs PyAV, which is not installed (the `[video]` extra provides it)."""


class ClipError(ValueError):
    """A file or frame folder that cannot be read, or used, as a clip; the message names it."""


# ---------------------------------------------------------------- helpers


def channel_mode(channels: int) -> str:
    """The PIL mode for a channel count: 1 -> "L", 3 -> "RGB", 4 -> "RGBA"."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels not in CHANNELS_TO_MODE:
        raise ValueError(f"channels must be one of {sorted(CHANNELS_TO_MODE)}, got {channels!r}")
    return CHANNELS_TO_MODE[channels]


def natural_sort_key(path: str | os.PathLike) -> list:
    """Sort key comparing runs of digits as numbers: frame2 before frame10."""
    parts = re.split(r"(\d+)", Path(path).as_posix())  # text at even positions, digits at odd
    return [int(part) if position % 2 else part for position, part in enumerate(parts)]


def is_frame_name(name: str) -> bool:
    """Whether a file name is a numbered frame image (`frame_0007.png`, `12.jpg`)."""
    stem, suffix = os.path.splitext(name)
    return suffix.lower() in IMAGE_EXTENSIONS and not name.startswith(".") and any(c.isdigit() for c in stem)


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The numbered frame images directly inside `folder`, in numeric order."""
    folder = Path(folder)
    return sorted((folder / name for name in os.listdir(folder) if is_frame_name(name)), key=natural_sort_key)


def import_av():
    """PyAV, imported on first use; a `MissingVideoSupportError` when it is not installed."""
    try:
        import av
    except ImportError as error:
        raise MissingVideoSupportError(
            f"reading or writing {', '.join(VIDEO_EXTENSIONS)} files needs PyAV: {VIDEO_EXTRA_INSTALL}"
        ) from error
    return av


@contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn the errors of a failing decoder into a `ClipError` naming `path`.

    Pillow and PyAV report damaged data through many exception types (OSError, EOFError,
    SyntaxError, struct.error, ValueError, av.FFmpegError, and IndexError from Pillow's
    GIF reader on a file cut inside an extension block); callers catch one.
    """
    try:
        yield
    except ClipError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError, IndexError, struct.error, *_av_errors()) as error:
        raise ClipError(f"{path}: {error}") from error


def _av_errors() -> tuple[type[Exception], ...]:
    av = sys.modules.get("av")  # no PyAV error can occur before PyAV is imported
    return (av.FFmpegError,) if av is not None else ()


# ---------------------------------------------------------------- reading


def convert_image(image: Image.Image, channels: int) -> Image.Image:
    """`image` in the PIL mode of `channels`, 16-bit grey (PNG) scaled to 8 bits first.

    Pillow converts 16-bit grey ("I;16", "I") to 8 bits by clipping at 255, which turns
    most of a 16-bit frame white; dividing by 257 maps 0..65535 onto 0..255.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64) / 257  # (h, w), 0..65535 -> 0..255
        image = Image.fromarray(values.round().clip(0, 255).astype(np.uint8))
    return image.convert(channel_mode(channels))


def seek_all_images(img: Image.Image, channels: int = 3) -> Iterator[Image.Image]:
    """Every frame of an (animated) PIL image, converted to the channel mode."""
    channel_mode(channels)
    for frame in ImageSequence.Iterator(img):
        yield convert_image(frame, channels)


def frames_to_tensor(frames: Iterable[Image.Image], transform: Callable = T.ToTensor()) -> Tensor:
    """Stack transformed frames into a clip: f x (c, h, w) -> (c, f, h, w).

    `transform` maps one PIL image to a `(c, h, w)` tensor (default: `ToTensor`, [0, 1]).
    """
    tensors = [transform(frame) for frame in frames]
    if not tensors:
        raise ValueError("the clip has no frames")
    if odd := next((index for index, frame in enumerate(tensors) if frame.shape != tensors[0].shape), None):
        raise ValueError(
            f"the frames differ in size: frame 0 is {tuple(tensors[0].shape)}, frame {odd} {tuple(tensors[odd].shape)}"
        )
    return torch.stack(tensors, dim=1)


def gif_to_tensor(path: str | os.PathLike, channels: int = 3, transform: Callable = T.ToTensor()) -> Tensor:
    """A GIF (or any animated image Pillow reads) as a `(c, f, h, w)` tensor in [0, 1]."""
    with Image.open(path) as image:
        return frames_to_tensor(seek_all_images(image, channels), transform)


def read_clip(
    path: str | os.PathLike,
    channels: int = 3,
    *,
    start: int = 0,
    stop: int | None = None,
    transform: Callable = T.ToTensor(),
) -> Tensor:
    """Frames `start` to `stop` (default: all) of a clip as a `(c, f, h, w)` tensor.

    `path` is a `.gif` (Pillow), a `.mp4`/`.webm`/`.avi`/`.mov` file (PyAV, the `[video]`
    extra), or a folder of numbered frame images taken in numeric order. Frames are
    converted to `channels` (1: L, 3: RGB, 4: RGBA); `transform` maps each PIL frame to a
    `(c, h, w)` tensor (default: unchanged size, values in [0, 1]). Decoding stops at
    `stop`, and a frame folder opens only the files it needs. Raises `ClipError` when the
    clip cannot be decoded or holds fewer frames than asked for.
    """
    channel_mode(channels)
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"expected 0 <= start <= stop, got start={start}, stop={stop}")
    clip_format = clip_format_of(path)
    with reading(path), closing(clip_format.frames(Path(path), channels, start)) as frames:
        clip = frames_to_tensor(islice(frames, None if stop is None else stop - start), transform)
    if stop is not None and clip.shape[1] < stop - start:
        raise ClipError(f"{path}: frames {start} to {stop} asked for, {clip.shape[1]} decoded")
    return clip


def count_frames(path: str | os.PathLike) -> int:
    """The number of frames of a clip, read from headers or stream metadata, not pixels."""
    clip_format = clip_format_of(path)
    with reading(path):
        return clip_format.count(Path(path))


class ClipFormat(NamedTuple):
    """How to count the frames of one kind of clip, and iterate them from a start frame."""

    count: Callable[[Path], int]
    frames: Callable[[Path, int, int], Iterator[Image.Image]]  # (path, channels, start)


def _count_gif(path: Path) -> int:
    with Image.open(path) as image:
        return getattr(image, "n_frames", 1)


def _gif_frames(path: Path, channels: int, start: int) -> Iterator[Image.Image]:
    with Image.open(path) as image:
        yield from islice(seek_all_images(image, channels), start, None)


def _count_frame_folder(path: Path) -> int:
    return len(frame_files(path))


def _frame_folder_frames(path: Path, channels: int, start: int) -> Iterator[Image.Image]:
    for file in frame_files(path)[start:]:
        with Image.open(file) as image:
            yield convert_image(image, channels)


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise ClipError(f"{path}: no video stream")
    return container.streams.video[0]


def _count_video(path: Path) -> int:
    with import_av().open(str(path)) as container:
        stream = _video_stream(container, path)
        # containers without a frame count in their header (webm): count packets, not decode
        return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)


def _video_frames(path: Path, channels: int, start: int) -> Iterator[Image.Image]:
    with import_av().open(str(path)) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        for frame in islice(container.decode(stream), start, None):  # decoding is sequential
            yield convert_image(frame.to_image(), channels)


GIF_FORMAT = ClipFormat(_count_gif, _gif_frames)
VIDEO_FORMAT = ClipFormat(_count_video, _video_frames)
FRAME_FOLDER_FORMAT = ClipFormat(_count_frame_folder, _frame_folder_frames)


def supported_formats(exts: Iterable[str] = SUPPORTED_EXTENSIONS, frame_folders: bool = True) -> str:
    """The clip formats accepted (files with suffixes `exts`, frame folders), for messages."""
    formats = ", ".join(exts) + " files"
    if any(ext in VIDEO_EXTENSIONS for ext in exts):
        formats += f" (video files need PyAV: {VIDEO_EXTRA_INSTALL})"
    if frame_folders:
        formats += f" and folders of numbered frame images ({', '.join(IMAGE_EXTENSIONS)})"
    return formats


def clip_format_of(path: str | os.PathLike) -> ClipFormat:
    """The reader for `path`, chosen by its suffix; folders are frame folders."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == GIF_EXTENSION:
        return GIF_FORMAT
    if suffix in VIDEO_EXTENSIONS:
        return VIDEO_FORMAT
    if path.is_dir():
        return FRAME_FOLDER_FORMAT
    raise ValueError(f"unsupported clip {str(path)!r}: expected {supported_formats()}")


# ---------------------------------------------------------------- writing


def tensor_to_images(tensor: Tensor) -> list[Image.Image]:
    """A `(c, f, h, w)` clip in [0, 1] as f PIL images (modes L, RGB, RGBA), rounded to uint8.

    Values outside [0, 1] are clipped; NaN or infinity (a diverged sample) is a ValueError,
    not a black frame.
    """
    if not isinstance(tensor, Tensor) or tensor.ndim != 4 or tensor.shape[0] not in CHANNELS_TO_MODE or tensor.shape[1] == 0:
        raise ValueError(
            f"expected a clip of shape (channels in {sorted(CHANNELS_TO_MODE)}, frames > 0, height, width), "
            f"got {tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__}"
        )
    clip = tensor.detach().cpu().float()
    check_finite(clip, "the clip to write")
    pixels = (clip.clamp(0, 1) * 255).round().to(torch.uint8)
    return [TF.to_pil_image(frame) for frame in pixels.unbind(dim=1)]  # (c, f, h, w) -> f x (c, h, w)


def video_tensor_to_gif(
    tensor: Tensor, path: str | os.PathLike, duration: int = 120, loop: int = 0, optimize: bool = True
) -> list[Image.Image]:
    """Write a `(c, f, h, w)` clip in [0, 1] as an animated GIF of exactly f frames, atomically.

    `duration` is the display time of each frame in milliseconds (GIF stores hundredths
    of a second), `loop` the number of repeats (0: forever), `optimize` lets Pillow shrink
    the first colour table (the others hold only the colours of their frame). Returns the PIL frames. 1 (grey), 3 (RGB)
    and 4 (RGBA) channels are accepted; GIF keeps 256 colours per frame, so a clip of at
    most 256 colours per frame reads back exactly (after rounding to uint8), and on/off
    transparency only (alpha below 0.5 becomes transparent).
    """
    images = tensor_to_images(tensor)
    (first, first_options), *rest = [_gif_frame(image) for image in images]
    with atomic_path(path) as temporary:
        first.save(temporary, format="GIF", duration=duration, loop=loop, optimize=optimize, **first_options)
        # Pillow's animated-GIF writer (`save_all`) merges identical consecutive frames
        # into one longer frame, which changes the frame count; its frame-level writer
        # (`getdata`) appends every further frame as given, with its own colour table
        with open(temporary, "r+b") as file:
            file.seek(-len(GIF_TRAILER), os.SEEK_END)
            for indexed, options in rest:
                file.writelines(GifImagePlugin.getdata(indexed, include_color_table=True, duration=duration, **options))
            file.write(GIF_TRAILER)
    return images


def _gif_frame(image: Image.Image) -> tuple[Image.Image, dict[str, int]]:
    """One frame as a palette image (256 colours), and its GIF options.

    With alpha, colours take 255 entries and entry 255 marks the transparent pixels;
    each frame then clears the last one (disposal 2) rather than draw over it.
    """
    if image.mode != "RGBA":
        return image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE), {}
    indexed = image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=GIF_TRANSPARENT_INDEX)
    palette = indexed.getpalette()
    indexed.putpalette(palette + [0, 0, 0] * (GIF_TRANSPARENT_INDEX + 1 - len(palette) // 3))
    transparent = image.getchannel("A").point(lambda alpha: 255 if alpha < 128 else 0, "1")
    indexed.paste(GIF_TRANSPARENT_INDEX, mask=transparent)
    return indexed, {"transparency": GIF_TRANSPARENT_INDEX, "disposal": 2}


def check_fps(fps: float) -> float:
    """A frame rate to write at: a positive finite number, else a TypeError or ValueError."""
    if check_number("fps", fps) <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return fps


def write_video(tensor: Tensor, path: str | os.PathLike, fps: int = 8) -> None:
    """Write a `(c, f, h, w)` clip in [0, 1] to `path`, atomically, at `fps` frames a second.

    The suffix chooses the format: `.gif` (Pillow), or `.mp4`/`.mov` (H.264, or MPEG-4
    part 2 when the PyAV build lacks libx264 or a side is odd), `.avi` (MPEG-4 part 2),
    `.webm` (VP9) through PyAV, the `[video]` extra. Video files are lossy and hold 1-
    or 3-channel clips (grey is stored as RGB); a 4-channel clip is refused there, since
    they keep no alpha.
    """
    check_fps(fps)
    suffix = Path(path).suffix.lower()
    if suffix == GIF_EXTENSION:
        video_tensor_to_gif(tensor, path, duration=round(1000 / fps))
    elif suffix in VIDEO_WRITERS:
        _write_with_pyav(tensor, Path(path), fps)
    else:
        raise ValueError(f"cannot write {str(path)!r}: expected a suffix in {(GIF_EXTENSION, *VIDEO_WRITERS)}")


def _write_with_pyav(tensor: Tensor, path: Path, fps: int) -> None:
    images = tensor_to_images(tensor)
    if images[0].mode == "RGBA":
        raise ValueError(f"{path.suffix} files keep no alpha: write a .gif, or pass tensor[:3] to drop it")
    av = import_av()
    width, height = images[0].size
    container_format, encoders = VIDEO_WRITERS[path.suffix.lower()]
    with atomic_path(path) as temporary, av.open(str(temporary), mode="w", format=container_format) as container:
        encoder = _pick_encoder(av, encoders, width, height)
        stream = container.add_stream(encoder, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = int(BITS_PER_PIXEL * width * height * fps)
        for image in images:
            frame = av.VideoFrame.from_image(image.convert("RGB"))  # converted to yuv420p by the encoder
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush delayed frames


def _pick_encoder(av, encoders: tuple[str, ...], width: int, height: int) -> str:
    odd = width % 2 or height % 2  # libx264 refuses odd sides in yuv420p; mpeg4 takes them
    usable = [name for name in encoders if name in av.codecs_available and not (odd and name == "libx264")]
    if not usable:
        raise MissingVideoSupportError(
            f"this PyAV build has none of the encoders {encoders} for a {width}x{height} clip"
        )
    return usable[0]
