"""The I3D network (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?", §2.4 and
Fig. 3): Inception-v1 inflated to 3-D, whose Kinetics-400 logits are the features of the
Fréchet Video Distance (Unterthiner et al. 2018).

Written here because no maintained package ships it. Parameter names follow the PyTorch
port of the released network (`pytorch-i3d`'s `InceptionI3d`), so its `rgb_imagenet.pt`
state dict loads as it is. Convolutions and pools pad like TensorFlow's 'SAME', as the
released network was trained. The final average pool is global: the same as the paper's
2x7x7 pool for 224 x 224 clips of 9 to 16 frames, and defined for shorter clips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# per Mixed block: input channels and the six branch widths (1x1; 1x1 -> 3x3; 1x1 -> 3x3; pool -> 1x1), Fig. 3
INCEPTION_BLOCKS = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def _same_padding(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, ...]:
    """TensorFlow 'SAME' padding of `x` (b, c, t, h, w), as `F.pad` takes it (last dimension first)."""
    pad = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pad += [total // 2, total - total // 2]
    return tuple(pad)


class MaxPool3dSamePadding(nn.MaxPool3d):
    """Max pooling with TensorFlow 'SAME' padding (zeros, as the released network)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, _same_padding(x, self.kernel_size, self.stride)))


class Unit3D(nn.Module):
    """Conv3d ('SAME' padding) -> batch norm -> ReLU, the network's building block."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), activation: bool = True, batch_norm: bool = True):  # fmt: skip
        super().__init__()
        self.kernel, self.stride, self.activation = kernel, stride, activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, bias=not batch_norm)
        self.bn = nn.BatchNorm3d(out_channels, eps=0.001, momentum=0.01) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(F.pad(x, _same_padding(x, self.kernel, self.stride)))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class InceptionModule(nn.Module):
    """The inflated Inception block: four branches concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        self.b0 = Unit3D(in_channels, widths[0])
        self.b1a, self.b1b = Unit3D(in_channels, widths[1]), Unit3D(widths[1], widths[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(in_channels, widths[3]), Unit3D(widths[3], widths[4], (3, 3, 3))
        self.b3a = MaxPool3dSamePadding(kernel_size=(3, 3, 3), stride=(1, 1, 1))
        self.b3b = Unit3D(in_channels, widths[5])

    def forward(self, x: Tensor) -> Tensor:
        branches = (self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x)))
        return torch.cat(branches, dim=1)


class InceptionI3d(nn.Module):
    """I3D on RGB clips `(b, 3, frames, h, w)` in [-1, 1] (224 x 224 as trained); returns
    the class logits `(b, num_classes)`, averaged over time like the released network."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        layers: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", Unit3D(in_channels, 64, (7, 7, 7), stride=(2, 2, 2))),
            ("MaxPool3d_2a_3x3", MaxPool3dSamePadding(kernel_size=(1, 3, 3), stride=(1, 2, 2))),
            ("Conv3d_2b_1x1", Unit3D(64, 64)),
            ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3))),
            ("MaxPool3d_3a_3x3", MaxPool3dSamePadding(kernel_size=(1, 3, 3), stride=(1, 2, 2))),
        ]
        pools = {"Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3)), "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2))}
        for name, (channels, widths) in INCEPTION_BLOCKS.items():
            if name in pools:
                pool_name, kernel = pools[name]
                layers.append((pool_name, MaxPool3dSamePadding(kernel_size=kernel, stride=(2, 2, 2))))
            layers.append((name, InceptionModule(channels, widths)))
        self.end_points = [name for name, _ in layers]
        for name, layer in layers:
            self.add_module(name, layer)
        self.logits = Unit3D(1024, num_classes, activation=False, batch_norm=False)

    def features(self, x: Tensor) -> Tensor:
        """The pooled 1024-channel features, `(b, 1024, t', 1, 1)`."""
        for name in self.end_points:
            x = getattr(self, name)(x)
        # (b, 1024, t', h', w') -> (b, 1024, t', 1, 1): per-frame spatial average
        return x.mean(dim=(3, 4), keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.logits(self.features(x))  # (b, classes, t', 1, 1)
        return logits.mean(dim=(2, 3, 4))  # averaged over time, as the released network
