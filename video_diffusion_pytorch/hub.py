"""Models from descriptions, whatever their class: the layer above the network and the
diffusion that turns a recorded description (a model folder's `config.json`, a Trainer
checkpoint's `config`) back into a model.

Only this package's two models are rebuilt, by an explicit check of the recorded class
name; nothing is imported by name from a file. Saving and loading model folders is
`pretrained.PretrainedMixin` (`save_pretrained`, `from_pretrained`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .diffusion import GaussianDiffusion
from .unet import Unet3D

MODEL_CLASSES = {"Unet3D": Unet3D, "GaussianDiffusion": GaussianDiffusion}


def describe_model(model: nn.Module) -> dict[str, Any]:
    """`{'class', 'config'}` of a Unet3D, plus `'denoise_fn'` for a GaussianDiffusion.

    Raises TypeError for other classes (subclasses included), which cannot be rebuilt
    from a description.
    """
    if type(model) is Unet3D or (type(model) is GaussianDiffusion and type(model.denoise_fn) is Unet3D):
        return model.describe()
    raise TypeError(
        f"only Unet3D and GaussianDiffusion (with a Unet3D denoiser) can be described, got {type(model).__name__}"
    )


def build_model(description: dict[str, Any]) -> nn.Module:
    """A freshly initialised model from `describe_model`'s output."""
    if not isinstance(description, dict) or not {"class", "config"} <= description.keys():
        raise ValueError(f"a model description is a dict with 'class' and 'config', got {description!r}")
    name = description["class"]
    if name not in MODEL_CLASSES:
        raise ValueError(f"the description names class {name!r}; expected 'Unet3D' or 'GaussianDiffusion'")
    return MODEL_CLASSES[name].from_description(description)
