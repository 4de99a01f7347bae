"""The denoiser contract: what `GaussianDiffusion` needs from its network, and the one
place where a call's conditioning is checked against it.

A denoiser is a module with
- `channels`: the video channels it takes;
- `cond_dim`: the width of its conditioning vectors, None when it is unconditional;
- `use_bert_text_cond`: True when its conditions are BERT embeddings of text (optional);
- `forward(x, time, cond=None, null_cond_prob=0., ...)` predicting from noisy videos
  `(b, channels, f, h, w)` and steps `(b,)`;
- `forward_with_cond_scale(x, time, cond=None, *, cond_scale, ...)`: the same with
  classifier-free guidance (Ho & Salimans 2022, eq. 6).
`Unet3D` is one. Conditions come from three sources (a Python call's `cond`, a training
dataset, the command line), and every rule about them is written here once; the sources
differ only in how the message tells the user to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from .checks import check_number

ConditionKind = Literal["none", "text", "vector"]
Source = Literal["cond", "dataset", "cli"]

TEXT_MODEL_HINT = "build it with Unet3D(..., use_bert_text_cond=True)"


class ConditioningError(ValueError, TypeError):
    """Conditions that do not fit the model: a wrong kind (text, vectors, none) is a type
    error and a wrong width or count a value error; this is both, so callers catch either."""


def condition_kind(cond: Any) -> ConditionKind:
    """'none', 'text' (a string or a list of strings) or 'vector' (a tensor) for a `cond`."""
    if cond is None:
        return "none"
    if isinstance(cond, str) or (
        isinstance(cond, (list, tuple)) and len(cond) > 0 and all(isinstance(c, str) for c in cond)
    ):
        return "text"
    if isinstance(cond, Tensor):
        return "vector"
    raise TypeError(f"cond must be a tensor (b, cond_dim) or a list of strings, got {type(cond).__name__}")


@dataclass(frozen=True)
class DenoiserSpec:
    """What a denoiser takes: `channels`, `cond_dim` (None: unconditional) and whether its
    conditions are text embeddings."""

    channels: int
    cond_dim: int | None = None
    text: bool = False

    @classmethod
    def of(cls, denoise_fn: nn.Module) -> DenoiserSpec:
        """Read the contract off a denoiser (its own `spec` when it has one, as `Unet3D`);
        a TypeError names what it lacks."""
        if isinstance(getattr(denoise_fn, "spec", None), cls):
            return denoise_fn.spec
        missing = [name for name in ("channels", "forward_with_cond_scale") if not hasattr(denoise_fn, name)]
        if missing:
            raise TypeError(
                f"the denoiser ({type(denoise_fn).__name__}) lacks {', '.join(missing)}: "
                "GaussianDiffusion needs a network like Unet3D (see video_diffusion_pytorch.denoiser)"
            )
        return cls(
            channels=denoise_fn.channels,
            cond_dim=getattr(denoise_fn, "cond_dim", None) if getattr(denoise_fn, "has_cond", True) else None,
            text=bool(getattr(denoise_fn, "use_bert_text_cond", False)),
        )

    @property
    def conditional(self) -> bool:
        return self.cond_dim is not None

    def check_condition(
        self,
        kind: ConditionKind,
        *,
        shape: tuple[int, ...] | None = None,
        rows: int | None = None,
        cond_scale: float = 1.0,
        cond_drop_prob: float = 0.0,
        source: Source = "cond",
    ) -> None:
        """Raise a `ConditioningError` unless conditions of `kind` fit this denoiser.

        Args:
            kind: what is given: 'none', 'text' or 'vector'.
            shape: the vectors' shape, `(b, cond_dim)` for a call's cond, `(cond_dim,)` for
                one dataset item.
            rows: the batch size the conditions must match, when known.
            cond_scale: the classifier-free guidance scale asked for (1 is none).
            cond_drop_prob: the probability of dropping conditions in training.
            source: where the conditions come from, for the message: 'cond' (a Python
                call), 'dataset' or 'cli'.
        """
        check_number("cond_scale", cond_scale)
        if cond_scale != 1 and not self.conditional:
            raise ConditioningError(
                f"cond_scale={cond_scale} asks for classifier-free guidance, but the denoiser is "
                "unconditional; use cond_scale=1"
            )
        if cond_drop_prob > 0 and not self.conditional:
            raise ConditioningError(f"cond_drop_prob={cond_drop_prob} needs a conditional model")
        if kind == "text" and not self.text:
            raise ConditioningError(_TEXT_NOT_TAKEN[source])
        if kind == "none":
            if self.conditional:
                raise ConditioningError(self._missing_message(source, rows))
            return
        if not self.conditional:
            raise ConditioningError(_UNCONDITIONAL[source].format(shape=shape))
        if kind == "vector":
            self._check_width(shape, rows, source)
        if rows is not None and shape is not None and shape[0] != rows:
            what = f"expected cond of shape ({rows}, {self.cond_dim}), got {shape}: " if kind == "vector" else ""
            raise ConditioningError(f"{what}cond has {shape[0]} rows but the videos have batch size {rows}")

    def _missing_message(self, source: Source, rows: int | None) -> str:
        if source == "dataset":
            if self.text:
                return (
                    "the model is text-conditioned (use_bert_text_cond=True), but the dataset has no captions: "
                    "put a caption file beside each clip (clip.gif + clip.txt)"
                )
            return "the model is conditional, but the dataset's items carry no condition"
        if source == "cli":
            return "this model is text-conditioned: pass --text with one or more prompts"
        text = " or, for text models, a list of strings" if self.text else ""
        return f"this model is conditional: pass cond of shape ({rows if rows is not None else 'b'}, {self.cond_dim}){text}"

    def _check_width(self, shape: tuple[int, ...], rows: int | None, source: Source) -> None:
        if shape[-1] == self.cond_dim and len(shape) == (1 if source == "dataset" else 2):
            return
        if source == "dataset":
            raise ConditioningError(
                f"the dataset yields condition vectors of shape {shape}, size {shape[-1]}, but the model takes "
                f"cond_dim={self.cond_dim}"
            )
        raise ConditioningError(f"expected cond of shape ({rows if rows is not None else 'b'}, {self.cond_dim}), got {shape}")


_TEXT_NOT_TAKEN: dict[str, str] = {
    "cond": f"got text conditions, but the denoiser is not text-conditioned: {TEXT_MODEL_HINT}, or pass embeddings as a tensor",
    "dataset": f"the dataset has captions, but the model is not text-conditioned: {TEXT_MODEL_HINT}, or train on a dataset without captions",
    "cli": "--text given, but this model is not text-conditioned",
}
_UNCONDITIONAL: dict[str, str] = {
    "cond": "this model is unconditional (no cond_dim, use_bert_text_cond=False) but got cond of shape {shape}",
    "dataset": "the model is unconditional (no cond_dim, use_bert_text_cond=False), but the dataset's items carry conditions",
    "cli": "this model is unconditional: it takes no --text",
}
