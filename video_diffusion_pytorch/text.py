"""Text conditioning with BERT through `transformers`.

The model is a Hugging Face name or a local folder: the `model` argument, else the
environment variable `VIDEO_DIFFUSION_BERT_MODEL`, else BERT-base (cased). Each model and
tokenizer loads once per process and is reused. Nothing is downloaded when the model is
in the local cache or is a local folder; when it is neither and the Hub cannot be
reached, loading fails at once with an error saying how to provide the weights.
"""

from __future__ import annotations

import functools
import os
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from einops import rearrange
from torch import Tensor

BERT_MODEL_DIM = 768
DEFAULT_BERT_MODEL = "bert-base-cased"
BERT_MODEL_ENV = "VIDEO_DIFFUSION_BERT_MODEL"


class BertUnavailableError(OSError):
    """The BERT weights or vocabulary could not be found locally or fetched."""


def bert_model_name(model: str | os.PathLike | None = None) -> str:
    """The BERT to use: `model`, else `$VIDEO_DIFFUSION_BERT_MODEL`, else bert-base-cased."""
    return str(model or os.environ.get(BERT_MODEL_ENV) or DEFAULT_BERT_MODEL)


def _hub_reachable(timeout: float = 3.0) -> bool:
    # transformers retries an unreachable Hub for about half a minute; one quick
    # connection attempt lets an offline user get the explanation at once
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(name: str, reason: str) -> BertUnavailableError:
    return BertUnavailableError(
        f"could not load BERT {name!r}: {reason}. Text conditioning needs a BERT model and "
        f"its vocabulary. Either download it once with network access, e.g.\n"
        f"    python -c \"from transformers import AutoModel, AutoTokenizer; "
        f"AutoModel.from_pretrained('{name}'); AutoTokenizer.from_pretrained('{name}')\"\n"
        f"or save one to a folder (config.json, weights, vocab.txt) and point "
        f"${BERT_MODEL_ENV} or the `model` argument at that folder."
    )


def _from_pretrained(loader, name: str):
    # transformers replaces torch.linspace by a wrapper while it builds a model; torch
    # fills its table of the factories that `with torch.device(...)` places on first
    # use, and if that happens inside, the table keeps the wrapper and the context stops
    # placing torch.linspace for the rest of the process. Filling it first prevents that.
    with torch.device("cpu"):
        torch.empty(0)
    if Path(name).expanduser().exists():
        try:
            return loader.from_pretrained(str(Path(name).expanduser()))
        except (OSError, ValueError) as error:
            raise _unavailable(name, f"the folder is not a complete saved model ({error})") from error
    try:
        return loader.from_pretrained(name, local_files_only=True)
    except OSError:
        if not _hub_reachable():
            raise _unavailable(name, "it is not in the local cache and the Hugging Face Hub is unreachable") from None
    try:
        return loader.from_pretrained(name)
    except OSError as error:
        raise _unavailable(name, str(error)) from error


@functools.lru_cache(maxsize=None)
def _load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, name)


@functools.lru_cache(maxsize=None)
def _load_config(name: str):
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, name)


@functools.lru_cache(maxsize=None)
def _load_bert(name: str):
    from transformers import AutoModel

    return _from_pretrained(AutoModel, name).eval()


def get_tokenizer(model: str | None = None):
    """The tokenizer of `bert_model_name(model)`, loaded once per process."""
    return _load_tokenizer(bert_model_name(model))


def get_bert(model: str | None = None):
    """The BERT model of `bert_model_name(model)`, loaded once per process, in eval mode."""
    return _load_bert(bert_model_name(model))


def max_text_length(model: str | None = None) -> int:
    """The most tokens, special ones included, that the BERT takes (512 for BERT-base)."""
    positions = _load_config(bert_model_name(model)).max_position_embeddings
    return min(positions, get_tokenizer(model).model_max_length)


def tokenize(texts: str | list[str] | tuple[str, ...], add_special_tokens: bool = True, *, model: str | None = None) -> Tensor:
    """Token ids `(b, n)` of one text or a list of texts, padded to the longest.

    A text longer than the BERT takes (`max_text_length`, 512 tokens for BERT-base) keeps
    its first tokens, with a warning naming it.
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"tokenize takes a string or a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError("tokenize needs at least one text, got an empty list")
    tokenizer, limit = get_tokenizer(model), max_text_length(model)
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=add_special_tokens, verbose=False).input_ids]
    if cut := [f"{text[:40]!r}... ({length} tokens)" for text, length in zip(texts, lengths) if length > limit]:
        warnings.warn(f"{len(cut)} text(s) cut to BERT's {limit} tokens: {', '.join(cut)}", stacklevel=2)
    encoding = tokenizer(
        list(texts), add_special_tokens=add_special_tokens, padding=True, truncation=True, max_length=limit,
        return_tensors="pt",
    )  # fmt: skip
    return encoding.input_ids


@torch.no_grad()
def bert_embed(
    token_ids: Tensor,
    return_cls_repr: bool = False,
    eps: float = 1e-8,
    pad_id: float = 0.0,
    *,
    model: str | None = None,
) -> Tensor:
    """Embed token ids `(b, n)` with BERT's last hidden state: `(b, hidden)`.

    The embedding is the CLS vector when `return_cls_repr`, else the mean over every
    non-pad token after the first (CLS). Runs on the device of `token_ids`.
    """
    bert = get_bert(model).to(token_ids.device)
    if token_ids.ndim != 2 or token_ids.shape[1] > bert.config.max_position_embeddings:
        raise ValueError(
            f"token_ids must be (batch, tokens) with at most {bert.config.max_position_embeddings} tokens, "
            f"got {tuple(token_ids.shape)}: tokenize cuts longer texts"
        )
    mask = token_ids != pad_id
    hidden = bert(input_ids=token_ids, attention_mask=mask).last_hidden_state  # (b, n, d)

    if return_cls_repr:
        return hidden[:, 0]
    mask = rearrange(mask[:, 1:], "b n -> b n 1")  # exclude the CLS token
    numer = (hidden[:, 1:] * mask).sum(dim=1)
    denom = mask.sum(dim=1)
    return numer / (denom + eps)


def embed_texts(texts: list[str] | tuple[str, ...], *, return_cls_repr: bool = False, device: torch.device | None = None, model: str | None = None) -> Tensor:
    """`bert_embed(tokenize(texts))` on `device`: `(len(texts), hidden)`."""
    token_ids = tokenize(texts, model=model)
    if device is not None:
        token_ids = token_ids.to(device)
    return bert_embed(token_ids, return_cls_repr=return_cls_repr, model=model)
