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

out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
trainer = make_trainer(
    out / f"results-rank{rank}", make_diffusion(seed=rank), make_clips(8),
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
    },
    out / f"state-rank{rank}.pt",
)
