"""Train a tiny video diffusion model on synthetic moving shapes for a few steps, then sample.

    python examples/quickstart.py
"""

import torch

from video_diffusion_pytorch import GaussianDiffusion, Unet3D
from video_diffusion_pytorch.synthetic import moving_shapes

torch.manual_seed(0)
model = Unet3D(dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
diffusion = GaussianDiffusion(model, image_size=16, num_frames=4, timesteps=50)
optimizer = torch.optim.Adam(diffusion.parameters(), lr=3e-4)

videos = moving_shapes(64, num_frames=4, image_size=16)  # (64, 3, 4, 16, 16) in [0, 1]
for step in range(30):
    batch = videos[torch.randint(0, len(videos), (8,))]
    loss = diffusion(batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 10 == 0:
        print(f"step {step:3d}  loss {loss.item():.4f}")

samples = diffusion.sample(batch_size=2)
print("sampled videos:", tuple(samples.shape), f"in [{samples.min():.2f}, {samples.max():.2f}]")
