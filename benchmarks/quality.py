"""Sample quality of each sampler, and of frame-conditioned generation, on synthetic motion.

Trains a tiny unconditional model on `synthetic.moving_shapes` (one bright grey shape
gliding in a straight line over a dark background and bouncing off the borders; 8 frames
of 16 x 16 px), caches its weights, then samples with every sampler and step count and
measures the videos against what the data makes measurable:

- well-formed frame: the background sits at the data's level and the frame holds exactly
  one bright blob whose area lies in the range seen in the data;
- coherent video: every frame well-formed, and from frame to frame the blob moves with
  the data's smoothness (centroid acceleration), keeps its brightness and its size,
  each within the data's 99.5th percentile (with a 25% margin);
- network evaluations (forward passes of the U-net) and seconds per video.

Then `predict` (4 given frames -> 8) and `extend` (4 -> 16, three blocks) with
reconstruction guidance and with replacement, measured at the block boundaries (the
first generated frame after given or earlier-generated ones): centroid acceleration
and brightness ("colour") jump across the boundary, the fraction of coherent boundaries, and for
`predict` the distance of the generated shape from where the true motion puts it.

    python benchmarks/quality.py            # trains (about 10 min on 2 cores), then samples
    python benchmarks/quality.py --reuse    # reuses the cached weights
    python benchmarks/quality.py --quick    # a smoke run of a few minutes

Prints two tables and writes them as JSON (`--json`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from video_diffusion_pytorch import GaussianDiffusion, Unet3D
from video_diffusion_pytorch.checkpoint import save_checkpoint
from video_diffusion_pytorch.files import atomic_write_text
from video_diffusion_pytorch.synthetic import moving_shapes

IMAGE_SIZE, NUM_FRAMES, CHANNELS, TIMESTEPS = 16, 8, 1, 1000
# small enough to train in about 10 minutes on 2 cores: no spatial linear attention (the
# frames are 16 px), one head in the temporal attention
UNET = dict(dim=16, dim_mults=(1, 2), channels=CHANNELS, attn_heads=1, attn_dim_head=16, use_sparse_linear_attn=False)
BACKGROUND = 0.08  # moving_shapes' background level
FOREGROUND_THRESHOLD = 0.2  # between the background and the dimmest shape colour (0.35)


# ------------------------------------------------------------ frame and video measurements


def label_blobs(foreground: torch.Tensor) -> torch.Tensor:
    """Connected components (8-neighbourhood) of bool frames `(n, h, w)`: labels `(n, h, w)`,
    0 for background. Each pixel takes the largest label around it until nothing changes."""
    n, h, w = foreground.shape
    labels = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w) * foreground
    while True:
        grown = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0] * foreground
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


@dataclass
class FrameStats:
    """Per-frame measurements of videos `(b, c, f, h, w)`, each shaped `(b, f)` (colour `(b, f, c)`)."""

    blobs: torch.Tensor
    area: torch.Tensor
    background_error: torch.Tensor
    centroid: torch.Tensor  # (b, f, 2) in pixels
    colour: torch.Tensor

    @classmethod
    def of(cls, videos: torch.Tensor) -> "FrameStats":
        b, c, f, h, w = videos.shape
        frames = rearrange(videos.clamp(0, 1), "b c f h w -> (b f) c h w")
        brightness = frames.amax(dim=1)  # (n, h, w)
        foreground = brightness > FOREGROUND_THRESHOLD
        labels = label_blobs(foreground)
        blobs = torch.tensor([len(torch.unique(frame[frame > 0])) for frame in labels])
        area = foreground.sum(dim=(1, 2)).float()
        background = ~F.max_pool2d(foreground[:, None].float(), 3, stride=1, padding=1)[:, 0].bool()
        background_error = ((brightness - BACKGROUND).abs() * background).sum(dim=(1, 2)) / background.sum(
            dim=(1, 2)
        ).clamp(min=1)
        weight = (brightness - BACKGROUND).clamp(min=0)  # intensity-weighted centroid
        coords = torch.arange(h, dtype=torch.float32)
        total = weight.sum(dim=(1, 2)).clamp(min=1e-6)
        centroid = torch.stack(
            ((weight.sum(dim=2) * coords).sum(dim=1) / total, (weight.sum(dim=1) * coords).sum(dim=1) / total), dim=-1
        )
        core = brightness >= 0.8 * brightness.amax(dim=(1, 2), keepdim=True)  # fully covered pixels
        colour = (frames * core[:, None]).sum(dim=(2, 3)) / core[:, None].sum(dim=(2, 3)).clamp(min=1)

        def per_video(x: torch.Tensor) -> torch.Tensor:
            return rearrange(x, "(b f) ... -> b f ...", b=b)

        return cls(*(per_video(x) for x in (blobs, area, background_error, centroid, colour)))

    def acceleration(self) -> torch.Tensor:
        """|c_{f+1} - 2 c_f + c_{f-1}| in pixels, `(b, f - 2)`, for frames 1..f-2."""
        c = self.centroid
        return (c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]).norm(dim=-1)

    def colour_jump(self) -> torch.Tensor:
        """Mean absolute colour change from each frame to the next, `(b, f - 1)`."""
        return (self.colour[:, 1:] - self.colour[:, :-1]).abs().mean(dim=-1)

    def area_jump(self) -> torch.Tensor:
        """Relative area change from each frame to the next, `(b, f - 1)`."""
        return (self.area[:, 1:] - self.area[:, :-1]).abs() / self.area[:, :-1].clamp(min=1)


@dataclass
class Criteria:
    """Thresholds read off the training data."""

    min_area: float
    max_area: float
    max_background_error: float
    max_acceleration: float
    max_colour_jump: float
    max_area_jump: float

    @classmethod
    def from_data(cls, stats: FrameStats, margin: float = 1.25) -> "Criteria":
        def high(x: torch.Tensor) -> float:
            return torch.quantile(x.flatten().float(), 0.995).item() * margin

        area = stats.area.flatten()
        return cls(
            min_area=torch.quantile(area, 0.005).item() / margin,
            max_area=high(area),
            max_background_error=max(high(stats.background_error), 0.03),
            max_acceleration=max(high(stats.acceleration()), 1.0),
            max_colour_jump=max(high(stats.colour_jump()), 0.05),
            max_area_jump=max(high(stats.area_jump()), 0.25),
        )

    def well_formed(self, stats: FrameStats) -> torch.Tensor:
        """Bool `(b, f)`: the background at the data's level and one blob of plausible size."""
        return (
            (stats.blobs == 1)
            & (stats.area >= self.min_area)
            & (stats.area <= self.max_area)
            & (stats.background_error <= self.max_background_error)
        )

    def smooth_steps(self, stats: FrameStats) -> torch.Tensor:
        """Bool `(b, f - 1)`: the step from frame i to i+1 keeps colour and size, and the
        motion around it (acceleration at i and i+1, where defined) is data-like."""
        steps = (stats.colour_jump() <= self.max_colour_jump) & (stats.area_jump() <= self.max_area_jump)
        smooth = stats.acceleration() <= self.max_acceleration  # (b, f - 2) at frames 1..f-2
        steps[:, 1:] &= smooth  # acceleration at frame i for the step i -> i+1
        steps[:, :-1] &= smooth  # and at frame i+1
        return steps

    def coherent(self, stats: FrameStats) -> torch.Tensor:
        """Bool `(b,)`: every frame well-formed and every step smooth."""
        return self.well_formed(stats).all(dim=1) & self.smooth_steps(stats).all(dim=1)


def video_metrics(videos: torch.Tensor, criteria: Criteria) -> dict[str, float]:
    stats = FrameStats.of(videos)
    well_formed = criteria.well_formed(stats)
    both = well_formed[:, 1:] & well_formed[:, :-1]  # steps between well-formed frames
    inner = well_formed[:, 2:] & well_formed[:, 1:-1] & well_formed[:, :-2]
    return dict(
        well_formed_frames=well_formed.float().mean().item(),
        coherent_videos=criteria.coherent(stats).float().mean().item(),
        acceleration_px=stats.acceleration()[inner].mean().item() if inner.any() else math.nan,
        colour_jump=stats.colour_jump()[both].mean().item() if both.any() else math.nan,
        frame_difference=(videos[:, :, 1:] - videos[:, :, :-1]).abs().mean().item(),
    )


def boundary_metrics(videos: torch.Tensor, first_new: list[int], truth: torch.Tensor | None, criteria: Criteria) -> dict[str, float]:
    """Coherence where generated frames meet earlier ones: at each boundary frame g (the
    first frame of a new block), the step g-1 -> g and the motion around it."""
    stats = FrameStats.of(videos)
    well_formed = criteria.well_formed(stats)
    steps = criteria.smooth_steps(stats)
    acceleration = stats.acceleration()
    coherent, accelerations, colour_jumps = [], [], []
    for g in first_new:
        window_ok = well_formed[:, g - 2 : g + 2].all(dim=1)
        coherent.append(window_ok & steps[:, g - 1])
        accelerations.append(acceleration[:, g - 2 : g].mean(dim=1)[window_ok])  # at frames g-1 and g
        colour_jumps.append(stats.colour_jump()[:, g - 1][window_ok])
    metrics = dict(
        coherent_boundaries=torch.cat(coherent).float().mean().item(),
        boundary_acceleration_px=torch.cat(accelerations).mean().item() if torch.cat(accelerations).numel() else math.nan,
        boundary_colour_jump=torch.cat(colour_jumps).mean().item() if torch.cat(colour_jumps).numel() else math.nan,
        well_formed_new_frames=well_formed[:, first_new[0] :].float().mean().item(),
    )
    if truth is not None:
        true_centroid = FrameStats.of(truth).centroid
        error = (stats.centroid - true_centroid).norm(dim=-1)[:, first_new[0] :]
        metrics["position_error_px"] = error[well_formed[:, first_new[0] :]].mean().item()
    return metrics


# ------------------------------------------------------------ model


def build_diffusion(unet: Unet3D, **kwargs) -> GaussianDiffusion:
    return GaussianDiffusion(unet, image_size=IMAGE_SIZE, num_frames=NUM_FRAMES, channels=CHANNELS, timesteps=TIMESTEPS, **kwargs)


def train(steps: int, batch_size: int, lr: float, seed: int) -> tuple[Unet3D, float]:
    """A plain Adam loop on fresh synthetic clips; returns the EMA U-net and the seconds taken."""
    torch.manual_seed(seed)
    unet = Unet3D(**UNET)
    diffusion = build_diffusion(unet)
    ema = build_diffusion(Unet3D(**UNET))
    ema.load_state_dict(diffusion.state_dict())
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=lr)
    data = torch.Generator().manual_seed(seed)
    start, running = time.time(), None
    for step in range(1, steps + 1):
        videos = moving_shapes(batch_size, num_frames=NUM_FRAMES, image_size=IMAGE_SIZE, channels=CHANNELS, generator=data)
        loss = diffusion(videos)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            decay = min(0.995, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), diffusion.parameters()):
                p_ema.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps:
            print(f"  step {step:5d}/{steps}  loss {running:.4f}  {time.time() - start:6.0f} s", flush=True)
    return ema.denoise_fn.eval(), time.time() - start


def load_or_train(args: argparse.Namespace) -> Unet3D:
    path = Path(args.weights)
    settings = dict(steps=args.train_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, unet=UNET)
    if args.reuse and path.exists():
        saved = torch.load(path, weights_only=True)
        if saved["settings"] == json.loads(json.dumps(settings)):
            unet = Unet3D(**UNET)
            unet.load_state_dict(saved["state_dict"])
            print(f"reusing {path} ({args.train_steps} training steps, trained in {saved['seconds']:.0f} s)")
            return unet.eval()
        print(f"{path} holds other settings ({saved['settings']}); training anew")
    print(f"training {args.train_steps} steps, batch {args.batch_size}, lr {args.lr}")
    unet, seconds = train(args.train_steps, args.batch_size, args.lr, args.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dict(state_dict=unet.state_dict(), settings=json.loads(json.dumps(settings)), seconds=seconds), path)
    return unet


class CountCalls:
    """Counts forward passes of a U-net (guidance calls `forward` directly, past any hook)."""

    def __init__(self, unet: Unet3D):
        self.count = 0
        forward = unet.forward

        def counted(*args, **kwargs):
            self.count += 1
            return forward(*args, **kwargs)

        unet.forward = counted


# ------------------------------------------------------------ benchmarks


def sample(unet: Unet3D, sampler: str, steps: int, eta: float, videos: int, seed: int) -> torch.Tensor:
    diffusion = build_diffusion(unet, sampler=sampler, sampling_timesteps=steps, ddim_sampling_eta=eta)
    return diffusion.sample(batch_size=videos, generator=torch.Generator().manual_seed(seed), progress=False)


def sampler_table(unet: Unet3D, configs: list[tuple[str, int, float]], videos: int, criteria: Criteria, calls: CountCalls, seed: int) -> list[dict]:
    """One row per (sampler, steps, DDIM eta), all from the same starting noise."""
    rows = []
    for sampler, steps, eta in configs:
        calls.count, start = 0, time.time()
        samples = sample(unet, sampler, steps, eta, videos, seed)
        seconds = time.time() - start
        row = dict(sampler=sampler, steps=steps, eta=eta, nfe=calls.count, seconds_per_video=seconds / videos)
        row.update(video_metrics(samples, criteria))
        rows.append(row)
        print_row(row, SAMPLER_COLUMNS)
    return rows


def conditioning_table(unet: Unet3D, sampler: str, steps: int, clips: torch.Tensor, weights: list[float], criteria: Criteria, calls: CountCalls, seed: int) -> list[dict]:
    diffusion = build_diffusion(unet, sampler=sampler, sampling_timesteps=steps)
    given, context = 4, 4
    rows = []
    methods = [("replacement", 0.0)] + [("reconstruction", w) for w in weights]
    for task, length in (("predict", NUM_FRAMES), ("extend", 2 * NUM_FRAMES)):
        boundaries = list(range(given, length, NUM_FRAMES - context))
        for method, w_r in methods:
            calls.count, start = 0, time.time()
            out = diffusion.extend(
                clips[:, :, :given], length, context_frames=context, method=method, w_r=w_r,
                generator=torch.Generator().manual_seed(seed), progress=False,
            )  # fmt: skip
            seconds = time.time() - start
            row = dict(task=f"{task} {given}->{length}", method=method, w_r=w_r, sampler=f"{sampler} {steps}",
                       nfe=calls.count, seconds_per_video=seconds / len(clips))  # fmt: skip
            row.update(boundary_metrics(out, boundaries, clips[:, :, :length] if task == "predict" else None, criteria))
            rows.append(row)
            print_row(row, CONDITIONING_COLUMNS)
    return rows


SAMPLER_COLUMNS = [
    ("sampler", "sampler", "{}"), ("steps", "steps", "{}"), ("eta", "eta", "{:g}"), ("nfe", "NFE", "{}"),
    ("seconds_per_video", "s/video", "{:.2f}"),
    ("well_formed_frames", "well-formed frames", "{:.1%}"), ("coherent_videos", "coherent videos", "{:.1%}"),
    ("acceleration_px", "accel px", "{:.2f}"), ("colour_jump", "colour jump", "{:.3f}"),
    ("frame_difference", "frame diff", "{:.4f}"),
]  # fmt: skip
CONDITIONING_COLUMNS = [
    ("task", "task", "{}"), ("method", "method", "{}"), ("w_r", "w_r", "{:g}"), ("sampler", "sampler", "{}"),
    ("nfe", "NFE", "{}"), ("seconds_per_video", "s/video", "{:.2f}"),
    ("coherent_boundaries", "coherent boundaries", "{:.1%}"), ("boundary_acceleration_px", "boundary accel px", "{:.2f}"),
    ("boundary_colour_jump", "boundary colour jump", "{:.3f}"), ("well_formed_new_frames", "well-formed new", "{:.1%}"),
    ("position_error_px", "position error px", "{:.2f}"),
]  # fmt: skip


def print_header(columns: list) -> None:
    print(" | ".join(f"{title:>{max(len(title), 8)}}" for _, title, _ in columns), flush=True)


def print_row(row: dict, columns: list) -> None:
    cells = []
    for key, title, fmt in columns:
        value = row.get(key)
        text = "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)
        cells.append(f"{text:>{max(len(title), 8)}}")
    print(" | ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few training steps and videos: a smoke run")
    parser.add_argument("--reuse", action="store_true", help="reuse the cached weights when their settings match")
    parser.add_argument("--weights", default="results/quality_model.pt", help="where the trained weights are cached")
    parser.add_argument("--json", default="results/quality.json", help="where the tables are written")
    parser.add_argument("--train-steps", type=int, default=None, help="default 2000 (quick: 150)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--videos", type=int, default=None, help="videos per sampler (default 16, quick: 4)")
    parser.add_argument("--clips", type=int, default=None, help="clips per conditioning run (default 8, quick: 2)")
    parser.add_argument("--conditioning-steps", type=int, default=25, help="DDIM steps for predict / extend")
    parser.add_argument("--weights-r", type=float, nargs="+", default=[4.0], help="reconstruction guidance weights w_r")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.train_steps = args.train_steps or (150 if args.quick else 2000)
    args.videos = args.videos or (4 if args.quick else 16)
    args.clips = args.clips or (2 if args.quick else 8)
    torch.set_num_threads(args.threads)
    total_start = time.time()

    unet = load_or_train(args)
    calls = CountCalls(unet)
    data = moving_shapes(512, num_frames=NUM_FRAMES, image_size=IMAGE_SIZE, channels=CHANNELS, generator=torch.Generator().manual_seed(10_000))
    criteria = Criteria.from_data(FrameStats.of(data))

    print("\nsamplers (unconditional, the same starting noise for every sampler)")
    print_header(SAMPLER_COLUMNS)
    data_row = dict(sampler="data", steps=None, eta=None, nfe=None, seconds_per_video=None, **video_metrics(data, criteria))
    print_row(data_row, SAMPLER_COLUMNS)
    # DDIM deterministic (eta 0) and half-way to ancestral (eta 0.5), which on an
    # undertrained model keeps frames more consistent with each other
    ddim_steps = (25, 10) if args.quick else (50, 25, 10)
    configs = [("ancestral", TIMESTEPS, 0.0)] + [("ddim", n, eta) for eta in (0.0, 0.5) for n in ddim_steps]
    samplers = sampler_table(unet, configs, args.videos, criteria, calls, args.seed)

    print(f"\nvideo prediction and extension from 4 true frames, DDIM {args.conditioning_steps} steps, blocks of {NUM_FRAMES} frames with 4 of context")
    print_header(CONDITIONING_COLUMNS)
    clips = moving_shapes(args.clips, num_frames=2 * NUM_FRAMES, image_size=IMAGE_SIZE, channels=CHANNELS, generator=torch.Generator().manual_seed(20_000))
    conditioning = conditioning_table(unet, "ddim", args.conditioning_steps, clips, args.weights_r, criteria, calls, args.seed)

    print(f"\ntotal {time.time() - total_start:.0f} s")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(dict(settings=vars(args), criteria=vars(criteria), data=data_row, samplers=samplers, conditioning=conditioning), indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
