from .diffusion import GaussianDiffusion
from .text import BERT_MODEL_DIM, bert_embed, tokenize
from .unet import Unet3D
from .version import __version__

__all__ = ["Unet3D", "GaussianDiffusion", "tokenize", "bert_embed", "BERT_MODEL_DIM", "__version__"]
