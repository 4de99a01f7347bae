"""Self-describing models: constructor arguments recorded once, and model folders
(`config.json` + `model.safetensors`) written and read for any model that has them.

`@records_config` on a model's `__init__` keeps its arguments (defaults filled in) as
`model.config`; arguments that are modules (a diffusion's denoiser) are not config but
models of their own, described beside it. `PretrainedMixin` gives such a model
`describe()`, `from_description()`, `save_pretrained(folder)` and
`from_pretrained(folder_or_hub_name)`.

Nothing here knows which models exist: a class rebuilds only its own description (the
recorded class name must be its own), and a class whose arguments include a module
rebuilds that module itself (`GaussianDiffusion.from_description`). safetensors holds no
code, and weights shared by several modules are written once (`safetensors.torch.save_model`
drops aliases, `load_model` restores them).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor, nn

from .files import atomic_path, atomic_write_text, remove_temporary_files
from .version import __version__

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DESCRIPTION_VERSION = 1

ModelT = TypeVar("ModelT", bound="PretrainedMixin")
InitT = TypeVar("InitT", bound=Callable[..., None])

# ---------------------------------------------------------------- recording the arguments


def records_config(init: InitT) -> InitT:
    """Decorate a model's `__init__` so that its arguments, defaults included, become
    `self.config` (modules among them become `self.config_modules`, their names), before
    the body runs: the signature is the one place that lists them."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        # sequences as tuples, as they read back from JSON lists
        arguments = {
            name: tuple(value) if isinstance(value, list) else value
            for name, value in bound.arguments.items()
            if name != "self"
        }
        modules = [name for name, value in arguments.items() if isinstance(value, nn.Module)]
        # set before nn.Module.__init__ runs, which keeps attributes already in __dict__
        object.__setattr__(self, "config", {k: v for k, v in arguments.items() if k not in modules})
        object.__setattr__(self, "config_modules", tuple(modules))
        init(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def jsonable(config: dict[str, Any]) -> dict[str, Any]:
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
    """The parsed `config.json` of a folder written by `save_pretrained`."""
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: it is not a folder written by save_pretrained")
    config = folder / CONFIG_NAME
    try:
        description = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config} is not valid JSON: {error}") from error
    if not isinstance(description, dict):
        raise ValueError(f"{config} must hold a JSON object (a model description), got a {type(description).__name__}")
    if not isinstance(description.get("config"), dict):
        found = type(description.get("config")).__name__
        raise ValueError(f"{config}: 'config' must be an object of constructor arguments, got a {found}")
    version = description.get("format_version", DESCRIPTION_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version > DESCRIPTION_VERSION:
        raise ValueError(
            f"{config} has format_version {version!r}, written by video-diffusion-pytorch "
            f"{description.get('library_version', '(unknown)')}; this version ({__version__}) reads format "
            f"{DESCRIPTION_VERSION} and older: upgrade the package to load it"
        )
    return description


def check_weights(state: Any, source: str) -> None:
    """Weights read from a file: a mapping of names to tensors, every value finite (a
    diverged run's NaN weights would only sample NaN); else a ValueError naming `source`."""
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        raise ValueError(f"{source} must be a mapping of parameter names to tensors, got a {type(state).__name__}")
    bad = [name for name, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise ValueError(f"{source} hold NaN or infinite values in {len(bad)} tensors, e.g. {bad[0]}: the run that wrote them diverged")


def weights_mismatch(model: nn.Module, state: dict[str, Tensor]) -> str:
    """Why the weights `state` do not fit `model`, in a line: tensors of other shapes,
    then names that only one of them has (the first of each, and how many)."""
    expected = model.state_dict()
    reasons = []
    shapes = [name for name in expected if name in state and expected[name].shape != state[name].shape]
    if shapes:
        name = shapes[0]
        reasons.append(
            f"{len(shapes)} tensors differ in shape, e.g. {name} is {tuple(state[name].shape)} in the file "
            f"but {tuple(expected[name].shape)} in the model"
        )
    for names, what in (([n for n in expected if n not in state], "missing from the file"),
                        ([n for n in state if n not in expected], "unknown to the model")):  # fmt: skip
        if names:
            reasons.append(f"{len(names)} tensors {what}, e.g. {names[0]}")
    return "; ".join(reasons) or "the file's tensors do not fit the model"


class PretrainedMixin:
    """Descriptions and model folders for a model whose `__init__` is `@records_config`."""

    config: dict[str, Any]
    config_modules: tuple[str, ...]
    # the class each module argument is rebuilt as, e.g. {"denoise_fn": Unet3D}
    module_classes: dict[str, type[PretrainedMixin]] = {}

    def describe(self) -> dict[str, Any]:
        """`{'class', 'config'}`, plus one entry per module argument (its own description)."""
        description = {"class": type(self).__name__, "config": jsonable(self.config)}
        for name in self.config_modules:
            module = getattr(self, name)
            if not isinstance(module, PretrainedMixin):
                raise TypeError(f"{type(self).__name__}.{name} is a {type(module).__name__}, which cannot describe itself")
            description[name] = module.describe()
        return description

    @classmethod
    def from_description(cls: type[ModelT], description: dict[str, Any]) -> ModelT:
        """A freshly initialised model from `describe()`'s output."""
        if description.get("class") != cls.__name__:
            raise ValueError(f"the description is of a {description.get('class')}, not a {cls.__name__}")
        missing = [name for name in cls.module_classes if name not in description]
        if missing:
            raise ValueError(f"a {cls.__name__} description needs the descriptions of {', '.join(missing)}")
        modules = {name: module_class.from_description(description[name]) for name, module_class in cls.module_classes.items()}
        try:
            return cls(**modules, **description["config"])
        except (TypeError, ValueError) as error:
            # arguments this version lacks (a config of another version), or values it refuses
            raise ValueError(f"cannot build {cls.__name__} from its config: {error}") from error

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write `config.json` and `model.safetensors` into `folder` (created if needed).

        Each file is replaced atomically. Returns the folder.
        """
        import safetensors.torch

        folder = Path(folder)
        description = {**self.describe(), "format_version": DESCRIPTION_VERSION, "library_version": __version__}
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
        try:
            model = cls.from_description(description)
        except ValueError as error:
            raise ValueError(f"{folder / CONFIG_NAME}: {error}") from error
        weights = folder / WEIGHTS_NAME
        try:
            safetensors.torch.load_model(model, weights, strict=True)
        except RuntimeError as error:  # names or shapes that differ from the config's model
            reason = weights_mismatch(model, safetensors.torch.load_file(weights))
            raise ValueError(f"{weights} does not fit the model that {CONFIG_NAME} describes: {reason}") from error
        except (safetensors.SafetensorError, OSError) as error:
            raise ValueError(f"{weights} is not a readable safetensors file, perhaps cut short or damaged ({error})") from error
        check_weights(model.state_dict(), f"the weights in {weights}")
        return model.to(device)
