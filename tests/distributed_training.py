"""Run by `torchrun --nproc_per_node 2` from test_trainer_distributed.py: each process
starts from different weights and trains a few steps with its own results folder, then
dumps its final state beside them."""

import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

from tiny_training import make_clips, make_diffusion, make_trainer  # noqa: E402



class RecordedClips(torch.utils.data.Dataset):
    """The clips, recording which ones this process reads."""

    def __init__(self):
        self.videos, self.read = make_clips(8), []

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, index):
        self.read.append(index)
        return self.videos[index]


out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
clips = RecordedClips()
trainer = make_trainer(
    out / f"results-rank{rank}", make_diffusion(seed=rank), clips,
    train_num_steps=3, save_and_sample_every=1, step_start_ema=1, update_ema_every=1,
)  # fmt: skip
logs = []
trainer.train(log_fn=logs.append)
torch.save(
    {
        "world": trainer.accelerator.num_processes,
        "model": trainer.model.state_dict(),
        "ema": trainer.ema_model.state_dict(),
        "losses": trainer.losses,
        "logs": len(logs),
        "data_position": trainer.data.position,
        "data_seed": trainer.data.seed,
        "read": clips.read[1:],  # the first item is read once at construction, to check its shape
    },
    out / f"state-rank{rank}.pt",
)
