"""The original library's module path: `from video_diffusion_pytorch.video_diffusion_pytorch
import Unet3D, GaussianDiffusion, Trainer` keeps working.

Re-exports the original's public names that exist here with the same meaning; the code
lives in the modules named in each import.
"""

from .attention import Attention, SpatialLinearAttention
from .data import CHANNELS_TO_MODE, gif_to_tensor, seek_all_images, video_tensor_to_gif
from .data import VideoDataset as Dataset
from .diffusion import GaussianDiffusion
from .ema import EMA
from .helpers import default, exists, extract, num_to_groups, prob_mask_like
from .helpers import normalize_to_neg_one_to_one as normalize_img
from .helpers import unnormalize_to_zero_to_one as unnormalize_img
from .nn import Block, Downsample, LayerNorm, PreNorm, Residual, ResnetBlock, SinusoidalPosEmb, Upsample
from .positions import RelativePositionBias
from .schedules import cosine_beta_schedule
from .text import BERT_MODEL_DIM, bert_embed, tokenize
from .trainer import Trainer, noop
from .unet import Unet3D

__all__ = [
    "Attention", "BERT_MODEL_DIM", "CHANNELS_TO_MODE", "Block", "Dataset", "Downsample", "EMA", "GaussianDiffusion",
    "LayerNorm", "PreNorm", "RelativePositionBias", "Residual", "ResnetBlock", "SinusoidalPosEmb",
    "SpatialLinearAttention", "Trainer", "Unet3D", "Upsample", "bert_embed", "cosine_beta_schedule",
    "default", "exists", "extract", "gif_to_tensor", "noop", "normalize_img", "num_to_groups",
    "prob_mask_like", "seek_all_images", "tokenize", "unnormalize_img", "video_tensor_to_gif",
]  # fmt: skip
