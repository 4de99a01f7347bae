"""Compiling the U-net for training, with inductor's cache kept between runs.

`torch.compile` spends minutes on its first calls (one compilation per input shape and
grad mode). Inductor caches what it compiled in `TORCHINDUCTOR_CACHE_DIR`; left unset,
that is a folder under /tmp, which a reboot or a fresh container clears. Unless the
variable is set, the cache goes to a folder under the user's cache directory instead
(`$XDG_CACHE_HOME` or `~/.cache`, then `video-diffusion-pytorch/inductor`), so a
restarted or repeated run starts in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


def inductor_cache_dir() -> Path:
    """Where inductor caches compiled kernels: `$TORCHINDUCTOR_CACHE_DIR` when set, else a
    folder under the user's cache directory (set in the environment for inductor)."""
    if not os.environ.get(CACHE_VARIABLE):
        cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ[CACHE_VARIABLE] = str(cache_home / "video-diffusion-pytorch" / "inductor")
    return Path(os.environ[CACHE_VARIABLE])


def compile_denoiser(denoiser: nn.Module, mode: bool | str = True) -> None:
    """Compile `denoiser` in place with its `compile(mode=...)` (`Unet3D.compile`).

    Args:
        denoiser: a U-net with a `compile` method taking `torch.compile`'s keywords.
        mode: True for torch's default mode, or a mode string ('reduce-overhead',
            'max-autotune', ...).
    """
    if not isinstance(mode, (bool, str)) or mode is False:
        raise ValueError(f"mode must be True or a torch.compile mode string, got {mode!r}")
    if not callable(getattr(denoiser, "compile", None)):
        raise TypeError(f"cannot compile a {type(denoiser).__name__}: it has no compile method")
    inductor_cache_dir()
    denoiser.compile(**({} if mode is True else {"mode": mode}))
