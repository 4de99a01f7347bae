from .data import gif_to_tensor, video_tensor_to_gif
from .diffusion import GaussianDiffusion
from .host_memory import keep_freed_host_memory
from .process import RECTIFIED_FLOW
from .text import BERT_MODEL_DIM, bert_embed, tokenize
from .trainer import Trainer
from .unet import Unet3D
from .version import __version__

__all__ = [
    "Unet3D",
    "GaussianDiffusion",
    "RECTIFIED_FLOW",
    "Trainer",
    "tokenize",
    "bert_embed",
    "BERT_MODEL_DIM",
    "video_tensor_to_gif",
    "gif_to_tensor",
    "keep_freed_host_memory",
    "__version__",
]
