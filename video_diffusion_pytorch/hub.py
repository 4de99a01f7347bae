"""Self-describing model folders: `config.json` + `model.safetensors`.

`model.save_pretrained(folder)` writes both; `Unet3D.from_pretrained(folder_or_name)` and
`GaussianDiffusion.from_pretrained(...)` rebuild the model from the config and load the
weights, from a local folder or, when no such folder exists, from a Hugging Face Hub
repository (`huggingface_hub.snapshot_download`, which uses its local cache).

The config is the model's constructor keywords (`model.config`); a GaussianDiffusion's
also describes its denoiser. Only the two classes of this package are rebuilt, by an
explicit check of the recorded class name; nothing is imported by name from the file.
safetensors holds no code, and the one rotary embedding that every temporal attention
shares is written once (`safetensors.torch.save_model` drops aliases, `load_model`
restores them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from .files import atomic_path, atomic_write_text, remove_temporary_files
from .version import __version__

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DESCRIPTION_VERSION = 1

ModelT = TypeVar("ModelT", bound="PretrainedMixin")

# ---------------------------------------------------------------- descriptions


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    """The config with tuples as lists and paths as strings; anything else non-JSON is an error."""

    def convert(key: str, value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [convert(key, item) for item in value]
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"config value {key}={value!r} ({type(value).__name__}) cannot be written to JSON")

    return {key: convert(key, value) for key, value in config.items()}


def describe_model(model: nn.Module) -> dict[str, Any]:
    """`{'class', 'config'}` of a Unet3D, plus `'denoise_fn'` for a GaussianDiffusion.

    Raises TypeError for other classes (subclasses included), which cannot be rebuilt
    from a description.
    """
    from .diffusion import GaussianDiffusion
    from .unet import Unet3D

    if type(model) is Unet3D:
        return {"class": "Unet3D", "config": _jsonable(model.config)}
    if type(model) is GaussianDiffusion:
        return {
            "class": "GaussianDiffusion",
            "config": _jsonable(model.config),
            "denoise_fn": describe_model(model.denoise_fn),
        }
    raise TypeError(
        f"only Unet3D and GaussianDiffusion (with a Unet3D denoiser) can be described, got {type(model).__name__}"
    )


def build_model(description: dict[str, Any]) -> nn.Module:
    """A freshly initialised model from `describe_model`'s output."""
    from .diffusion import GaussianDiffusion
    from .unet import Unet3D

    if not isinstance(description, dict) or not {"class", "config"} <= description.keys():
        raise ValueError(f"a model description is a dict with 'class' and 'config', got {description!r}")
    name, config = description["class"], description["config"]
    try:
        if name == "Unet3D":
            return Unet3D(**config)
        if name == "GaussianDiffusion":
            return GaussianDiffusion(build_model(description["denoise_fn"]), **config)
    except TypeError as error:
        # a config written by another version of the library, with arguments this one lacks
        raise ValueError(f"cannot build {name} from its config {config}: {error}") from error
    raise ValueError(f"the description names class {name!r}; expected 'Unet3D' or 'GaussianDiffusion'")


# ---------------------------------------------------------------- folders


def resolve_pretrained(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; otherwise the Hub repository `name_or_path`, downloaded or cached."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is a file; from_pretrained takes a folder written by save_pretrained")
        return path
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(str(name_or_path), revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is not a local folder, and fetching it from the Hugging Face Hub failed: {error}"
        ) from error
    return Path(folder)


def read_description(folder: Path) -> dict[str, Any]:
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: it is not a folder written by save_pretrained")
    try:
        return json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{folder / CONFIG_NAME} is not valid JSON: {error}") from error


class PretrainedMixin:
    """`save_pretrained` / `from_pretrained` for Unet3D and GaussianDiffusion."""

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write `config.json` and `model.safetensors` into `folder` (created if needed).

        Each file is replaced atomically. Returns the folder.
        """
        import safetensors.torch

        folder = Path(folder)
        description = {
            **describe_model(self),
            "format_version": DESCRIPTION_VERSION,
            "library_version": __version__,
        }
        folder.mkdir(parents=True, exist_ok=True)
        remove_temporary_files(folder)  # left by a save that was killed
        with atomic_path(folder / WEIGHTS_NAME) as temporary:
            safetensors.torch.save_model(self, str(temporary))
        atomic_write_text(folder / CONFIG_NAME, json.dumps(description, indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(
        cls: type[ModelT],
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        device: str | torch.device = "cpu",
    ) -> ModelT:
        """Rebuild a model saved with `save_pretrained`.

        Args:
            name_or_path: a local folder, or a Hugging Face Hub repository id (fetched only
                when no local folder of that name exists).
            revision: the Hub revision (branch, tag or commit).
            device: where to put the model.
        """
        import safetensors.torch

        folder = resolve_pretrained(name_or_path, revision)
        description = read_description(folder)
        if description.get("class") != cls.__name__:
            raise ValueError(f"{folder} holds a {description.get('class')}, not a {cls.__name__}")
        model = build_model(description)
        safetensors.torch.load_model(model, folder / WEIGHTS_NAME, strict=True)
        return model.to(device)
