"""Tiny models, data and Trainers shared by the trainer, checkpoint and CLI tests."""

import pytest
import torch

from video_diffusion_pytorch import GaussianDiffusion, Trainer, Unet3D
from video_diffusion_pytorch.synthetic import moving_shapes

TINY = dict(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
FRAMES, SIZE = 3, 8
# the same model as `TINY` on the command line
TINY_MODEL_OPTIONS = [
    "--image-size", str(SIZE), "--frames", str(FRAMES), "--dim", "8", "--dim-mults", "1", "2",
    "--attn-heads", "2", "--attn-dim-head", "8", "--timesteps", "5",
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: tiny ops gain nothing from two, and on a busy machine two
    OpenMP threads waiting on each other are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_diffusion(seed=0, **unet_kwargs):
    torch.manual_seed(seed)
    return GaussianDiffusion(Unet3D(**TINY, **unet_kwargs), image_size=SIZE, num_frames=FRAMES, timesteps=10)


def make_clips(n=5):
    return moving_shapes(n, num_frames=FRAMES, image_size=SIZE, generator=torch.Generator().manual_seed(1))


def write_clip_folder(folder, n=4):
    """`n` tiny GIF clips in `folder`, for the command line."""
    from video_diffusion_pytorch.data import video_tensor_to_gif

    for index, clip in enumerate(make_clips(n)):
        video_tensor_to_gif(clip, folder / f"clip{index}.gif")
    return folder


def make_trainer(results_folder, diffusion=None, data=None, **kwargs):
    options = dict(
        train_batch_size=2, train_num_steps=4, gradient_accumulate_every=2, save_and_sample_every=100,
        num_sample_rows=1, results_folder=results_folder, progress=False, seed=0,
    )  # fmt: skip
    options.update(kwargs)
    return Trainer(diffusion or make_diffusion(), make_clips() if data is None else data, **options)


class FlippedClips(torch.utils.data.Dataset):
    """Clips flipped at random with the global generator, as a folder dataset would."""

    def __init__(self, n=5):
        self.videos = make_clips(n)

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, index):
        video = self.videos[index]
        return video.flip(-1) if torch.rand(()) < 0.5 else video


class CaptionedClips(torch.utils.data.Dataset):
    """(video, caption) pairs listing their captions, as a captioned folder would."""

    def __init__(self, captions):
        self.videos, self.captions = make_clips(len(captions)), list(captions)

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, index):
        return self.videos[index], self.captions[index]
