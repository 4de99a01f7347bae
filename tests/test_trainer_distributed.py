"""Data-parallel training in two CPU processes (gloo), launched as a user would."""

import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import torch

from video_diffusion_pytorch.loader import InfiniteSampler

SCRIPT = Path(__file__).parent / "distributed_training.py"
REPO = Path(__file__).resolve().parents[1]


def test_two_processes_agree_and_only_the_main_one_writes(tmp_path):
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]

    main, other = (torch.load(tmp_path / f"state-rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert main["world"] == other["world"] == 2
    for key in ("model", "ema"):
        for name, value in main[key].items():
            assert torch.equal(value, other[key][name]), (key, name)
    assert main["losses"] == other["losses"]  # the logged loss is the mean over processes
    assert main["data_position"] == 3 * 2 * 2 * 2  # steps x accumulation x batch x processes

    # one stream of clips, dealt out by accelerate: batch k of the stream goes to process k % 2
    assert main["data_seed"] == other["data_seed"]
    stream = [index for index, _ in islice(InfiniteSampler(8, seed=main["data_seed"]), 4 * 6)]
    batches = [stream[i : i + 2] for i in range(0, len(stream), 2)]
    for rank, state in enumerate((main, other)):
        taken = [state["read"][i : i + 2] for i in range(0, 12, 2)]  # the 6 batches of 3 steps x 2
        assert taken == batches[rank::2][:6], rank

    # the main process wrote milestones 1 and 2 (steps 1 and 2; not step 0); the other wrote nothing
    written = sorted(p.name for p in (tmp_path / "results-rank0").iterdir())
    assert written == ["1.gif", "2.gif", "loss.png", "model-1.pt", "model-2.pt", "run.json"]
    assert not (tmp_path / "results-rank1").exists()
    assert main["logs"] == 3 and other["logs"] == 0
    checkpoint = torch.load(tmp_path / "results-rank0" / "model-2.pt", weights_only=True)
    assert len(checkpoint["rng"]) == 2  # each process's random state, for an exact resume
    assert not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])
