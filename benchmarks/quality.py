"""Sample quality per network evaluation: every sampler, spacing and step count, and the
training-side levers, on synthetic motion; then frame-conditioned generation.

Trains tiny unconditional models on `synthetic.moving_shapes` (one bright grey shape
gliding in a straight line over a dark background and bouncing off the borders; 8 frames
of 16 x 16 px), caches their weights, samples each with every sampler and measures the
videos with `video_diffusion_pytorch.metrics.motion_coherence` (criteria read off the
data): well-formed frames, coherent videos (every frame well-formed and every step moving,
shining and sizing like the data), network evaluations (NFE) and seconds per video. Each
rate comes with a 95% interval: Wilson for coherent videos, a bootstrap over videos for
well-formed frames (frames of one video are not independent).

Models ("levers"), trained for the same steps on the same data, init, optimiser and EMA:
- `eps`: the package's default (noise prediction, cosine schedule, l1 loss);
- `v_zero_snr`: v-prediction on the cosine schedule rescaled to zero terminal SNR
  (Lin et al. 2024, `rescale_zero_terminal_snr` here);
- `rectified_flow`: `GaussianDiffusion(**RECTIFIED_FLOW)`: `x_t = (1 - t) x_0 + t eps`, the
  network predicting `eps - x_0`, t logit-normal (Esser et al. 2024, §2 and §3.1), MSE. It
  is sampled with the same samplers through the variance-preserving view of its path:
  `abar(t) = (1 - t)² / ((1 - t)² + t²)` on T levels `t = i / T`, i = 1..T, so DDIM there
  is its Euler method.

With `--clips N`, then `predict` (4 given frames -> 8) and `extend` (4 -> 16, three blocks) with
reconstruction guidance and with replacement, measured at the block boundaries.

    python benchmarks/quality.py --reuse --threads 1 --sample-seeds 0 1 2   # eps and rectified flow, 6000 steps each;
                                                                            # every sampler at 10, 25, 50 NFE and ancestral
    python benchmarks/quality.py --reuse --threads 1 --train-steps 1000 --levers eps v_zero_snr rectified_flow \
        --samplers ddim ddpm dpmpp_2m_sde --nfe 25 --lever-samplers ddim ddpm dpmpp_2m_sde --lever-nfe 25
    python benchmarks/quality.py --quick                    # a smoke run of a few minutes

The README's tables come from these (about 40 minutes a model on one CPU thread for the first).
Prints the tables and writes them as JSON (`--json`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from video_diffusion_pytorch import RECTIFIED_FLOW, GaussianDiffusion, Unet3D
from video_diffusion_pytorch.checkpoint import save_checkpoint
from video_diffusion_pytorch.files import atomic_write_text
from video_diffusion_pytorch.helpers import normalize_to_neg_one_to_one, unnormalize_to_zero_to_one
from video_diffusion_pytorch.metrics import Criteria, FrameStats, coherent_videos, motion_coherence, wilson_interval
from video_diffusion_pytorch.samplers import run_sampler, timestep_schedule
from video_diffusion_pytorch.schedules import cosine_beta_schedule
from video_diffusion_pytorch.synthetic import moving_shapes

IMAGE_SIZE, NUM_FRAMES, CHANNELS, TIMESTEPS = 16, 8, 1, 1000
# small enough to train in about 10 minutes on 2 cores: no spatial linear attention (the
# frames are 16 px), one head in the temporal attention
UNET = dict(dim=16, dim_mults=(1, 2), channels=CHANNELS, attn_heads=1, attn_dim_head=16, use_sparse_linear_attn=False)
LEVERS = ("eps", "v_zero_snr", "rectified_flow")


# ------------------------------------------------------------ models and their training


def build_diffusion(unet: Unet3D, **kwargs) -> GaussianDiffusion:
    return GaussianDiffusion(unet, image_size=IMAGE_SIZE, num_frames=NUM_FRAMES, channels=CHANNELS, timesteps=TIMESTEPS, **kwargs)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale a schedule so that its last step is pure noise (Lin et al. 2024, "Common
    Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1): `sqrt(abar)` is
    shifted so that its last value is 0 and scaled so that its first is unchanged, hence
    `abar_T = 0` (zero terminal SNR) and `beta_T = 1`. Such a schedule needs a network that
    does not predict the noise (v or x_0), since x_T holds no signal to take it from.
    Returns float64 `(T,)`."""
    sqrt_abar = torch.cumprod(1 - betas.double(), dim=0).sqrt()  # (T,)
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    alphas_cumprod = sqrt_abar**2
    alphas = torch.cat((alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]))
    return 1 - alphas


# the package's models; the other lever is written here
PACKAGE_LEVERS = {"eps": {}, "rectified_flow": RECTIFIED_FLOW}


def v_zero_snr_alphas_cumprod() -> torch.Tensor:
    """The noise levels `abar` `(T,)` of the `v_zero_snr` lever."""
    return torch.cumprod(1 - rescale_zero_terminal_snr(cosine_beta_schedule(TIMESTEPS)), 0).float()


def lever_loss(lever: str, unet: Unet3D) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training loss of videos in [0, 1] under each lever."""
    if lever in PACKAGE_LEVERS:
        return build_diffusion(unet, **PACKAGE_LEVERS[lever])
    alphas_cumprod = v_zero_snr_alphas_cumprod()

    def loss(videos: torch.Tensor) -> torch.Tensor:
        # v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022), l1 like the default
        x_start = normalize_to_neg_one_to_one(videos)
        t = torch.randint(0, TIMESTEPS, (videos.shape[0],))
        noise = torch.randn_like(x_start)
        a, s = alphas_cumprod[t].sqrt().view(-1, 1, 1, 1, 1), (1 - alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1, 1)
        return F.l1_loss(a * noise - s * x_start, unet(a * x_start + s * noise, t))

    return loss


def train(lever: str, steps: int, batch_size: int, lr: float, seed: int) -> tuple[Unet3D, float]:
    """A plain Adam loop on fresh synthetic clips; returns the EMA U-net and the seconds taken."""
    torch.manual_seed(seed)
    unet, ema = Unet3D(**UNET), Unet3D(**UNET)
    ema.load_state_dict(unet.state_dict())
    loss_of = lever_loss(lever, unet)
    optimizer = torch.optim.Adam(unet.parameters(), lr=lr)
    data = torch.Generator().manual_seed(seed)
    start, running = time.time(), None
    for step in range(1, steps + 1):
        videos = moving_shapes(batch_size, num_frames=NUM_FRAMES, image_size=IMAGE_SIZE, channels=CHANNELS, generator=data)
        loss = loss_of(videos)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            decay = min(0.995, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps:
            print(f"  {lever} step {step:5d}/{steps}  loss {running:.4f}  {time.time() - start:6.0f} s", flush=True)
    return ema.eval(), time.time() - start


def load_or_train(args: argparse.Namespace, lever: str) -> Unet3D:
    path = Path(args.weights.format(lever=lever, steps=args.train_steps))
    settings = dict(steps=args.train_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, unet=UNET)
    if args.reuse and path.exists():
        saved = torch.load(path, weights_only=True)
        saved_settings = json.loads(json.dumps({k: v for k, v in saved["settings"].items() if k != "lever"}))
        if saved_settings == json.loads(json.dumps(settings)):
            unet = Unet3D(**UNET)
            unet.load_state_dict(saved["state_dict"])
            print(f"reusing {path} ({lever}, {args.train_steps} training steps, trained in {saved['seconds']:.0f} s)")
            return unet.eval()
        print(f"{path} holds other settings ({saved['settings']}); training anew")
    print(f"training {lever}: {args.train_steps} steps, batch {args.batch_size}, lr {args.lr}")
    unet, seconds = train(lever, args.train_steps, args.batch_size, args.lr, args.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dict(state_dict=unet.state_dict(), settings=json.loads(json.dumps(dict(settings, lever=lever))), seconds=seconds), path)
    return unet


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


# ------------------------------------------------------------ sampling


def lever_denoiser(unet: Unet3D, lever: str) -> tuple[Callable, dict]:
    """The denoiser `(x_t, t) -> (x_0 clipped to [-1, 1], eps)` the samplers take, and the
    noise levels it is sampled on, for each lever (the package's go through `GaussianDiffusion`)."""
    if lever in PACKAGE_LEVERS:
        diffusion = build_diffusion(unet, **PACKAGE_LEVERS[lever])
        schedule = dict(alphas_cumprod=diffusion.alphas_cumprod, q_posterior=diffusion.q_posterior)
        return (lambda x, t: diffusion.model_predictions(x, t)), schedule
    alphas_cumprod = v_zero_snr_alphas_cumprod()

    def denoise(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        x_start = (a * x - s * unet(x, t)).clamp(-1, 1)  # x_0 = sqrt(abar) x_t - sqrt(1 - abar) v
        return x_start, (x - a * x_start) / s  # eps consistent with the clipped x_0

    return denoise, dict(alphas_cumprod=alphas_cumprod)


@torch.inference_mode()
def sample(unet: Unet3D, lever: str, config: dict, videos: int, seed: int) -> torch.Tensor:
    """`videos` samples in [0, 1] with one sampler configuration, from noise seeded by `seed`."""
    denoise, schedule = lever_denoiser(unet, lever)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((videos, CHANNELS, NUM_FRAMES, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
    steps = timestep_schedule(schedule["alphas_cumprod"], config["steps"], config["spacing"])
    out = run_sampler(config["sampler"], denoise, noise, steps, **schedule, eta=config["eta"], generator=generator, progress=False)
    return unnormalize_to_zero_to_one(out)


def score(samples: torch.Tensor, criteria: Criteria, resamples: int = 1000) -> dict:
    """`motion_coherence` with 95% intervals: Wilson for coherent videos, a bootstrap over
    videos for well-formed frames."""
    row = motion_coherence(samples, criteria)
    coherent = int(coherent_videos(samples, criteria).sum())
    row["coherent_low"], row["coherent_high"] = wilson_interval(coherent, len(samples))
    per_video = criteria.well_formed(FrameStats.of(samples)).float().mean(dim=1)  # (b,)
    picks = torch.randint(0, len(samples), (resamples, len(samples)), generator=torch.Generator().manual_seed(0))
    row["well_formed_low"], row["well_formed_high"] = torch.quantile(per_video[picks].mean(dim=1), torch.tensor([0.025, 0.975])).tolist()
    return row


def sampler_configs(nfe: list[int], samplers: list[str]) -> list[dict]:
    """Each named sampler ('name' or 'name:karras', 'ddim:0.5' for DDIM's eta) at each number
    of network evaluations; 'ancestral' over all steps."""
    configs = []
    for spec in samplers:
        if spec == "ancestral":
            configs.append(dict(sampler="ancestral", steps=TIMESTEPS, spacing="uniform", eta=0.0))
            continue
        name, _, option = spec.partition(":")
        spacing = "karras" if option == "karras" else "uniform"
        eta = float(option) if name == "ddim" and option else 0.0
        configs += [dict(sampler=name, steps=n, spacing=spacing, eta=eta) for n in nfe]
    return configs


def sampler_table(unet: Unet3D, lever: str, configs: list[dict], videos: int, criteria: Criteria, calls: "CountCalls", seeds: list[int]) -> list[dict]:
    """One row per sampler configuration, all from the same starting noise: `videos` from
    each seed, pooled."""
    rows = []
    for config in configs:
        calls.count, start = 0, time.time()
        samples = torch.cat([sample(unet, lever, config, videos, seed) for seed in seeds])
        seconds = time.time() - start
        row = dict(lever=lever, **config, nfe=calls.count // len(seeds), seconds_per_video=seconds / len(samples), videos=len(samples))
        row.update(score(samples, criteria))
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


class CountCalls:
    """Counts forward passes of a U-net (guidance calls `forward` directly, past any hook)."""

    def __init__(self, unet: Unet3D):
        self.count = 0
        forward = unet.forward

        def counted(*args, **kwargs):
            self.count += 1
            return forward(*args, **kwargs)

        unet.forward = counted


SAMPLER_COLUMNS = [
    ("lever", "model", "{}"), ("sampler", "sampler", "{}"), ("spacing", "spacing", "{}"), ("eta", "eta", "{:g}"),
    ("nfe", "NFE", "{}"), ("videos", "videos", "{}"), ("seconds_per_video", "s/video", "{:.2f}"),
    ("well_formed_frames", "well-formed frames", "{:.1%}"), ("well_formed_low", "95% from", "{:.1%}"), ("well_formed_high", "to", "{:.1%}"),
    ("coherent_videos", "coherent videos", "{:.1%}"), ("coherent_low", "95% from", "{:.1%}"), ("coherent_high", "to", "{:.1%}"),
    ("acceleration_px", "accel px", "{:.2f}"), ("colour_jump", "colour jump", "{:.3f}"),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few training steps and videos: a smoke run")
    parser.add_argument("--reuse", action="store_true", help="reuse the cached weights when their settings match")
    parser.add_argument("--weights", default="results/quality_{lever}_{steps}.pt", help="where the weights are cached")
    parser.add_argument("--json", default="results/quality.json", help="where the tables are written")
    parser.add_argument("--train-steps", type=int, default=None, help="default 6000 (quick: 150)")
    parser.add_argument("--train-only", action="store_true", help="train (or find) the models and stop")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--levers", nargs="+", choices=LEVERS, default=["eps", "rectified_flow"], help="models to train and compare")
    parser.add_argument("--videos", type=int, default=None, help="videos per sampler (default 64, quick: 4)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 25, 50], help="network evaluations per video")
    parser.add_argument("--samplers", nargs="+", default=["ancestral", "ddim", "ddim:0.5", "ddpm", "ddpm:karras", "dpmpp_2m_sde", "dpmpp_2m_sde:karras"],
                        help="NAME, NAME:karras (Karras spacing) or ddim:ETA")  # fmt: skip
    parser.add_argument("--lever-samplers", nargs="+", default=["ancestral", "ddim", "ddim:0.5", "ddpm", "ddpm:karras", "dpmpp_2m_sde", "dpmpp_2m_sde:karras"],
                        help="samplers for the other levers ('ancestral' for the package's models only)")  # fmt: skip
    parser.add_argument("--lever-nfe", type=int, nargs="+", default=[10, 25, 50], help="NFE for the other levers")
    parser.add_argument("--clips", type=int, default=0, help="clips per conditioning run (0: skip that table)")
    parser.add_argument("--conditioning-steps", type=int, default=25, help="DDIM steps for predict / extend")
    parser.add_argument("--weights-r", type=float, nargs="+", default=[4.0], help="reconstruction guidance weights w_r")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the training")
    parser.add_argument("--sample-seeds", type=int, nargs="+", default=[0], help="seeds of the sampling noise: --videos from each, pooled")
    args = parser.parse_args()
    args.train_steps = args.train_steps or (150 if args.quick else 6000)
    args.videos = args.videos or (4 if args.quick else 64)
    torch.set_num_threads(args.threads)
    total_start = time.time()

    data = moving_shapes(512, num_frames=NUM_FRAMES, image_size=IMAGE_SIZE, channels=CHANNELS, generator=torch.Generator().manual_seed(10_000))
    criteria = Criteria.from_data(data)
    print("\nsamplers (unconditional, the same starting noise for every sampler)")
    print_header(SAMPLER_COLUMNS)
    data_row = dict(lever="data", **score(data, criteria))
    print_row(data_row, SAMPLER_COLUMNS)
    samplers, conditioning = [], []
    for lever in args.levers:
        unet = load_or_train(args, lever)
        if args.train_only:
            continue
        calls = CountCalls(unet)
        configs = sampler_configs(args.nfe, args.samplers) if lever == "eps" else sampler_configs(args.lever_nfe, args.lever_samplers)
        samplers += sampler_table(unet, lever, configs, args.videos, criteria, calls, args.sample_seeds)
        if lever == "eps" and args.clips:
            print(f"\nvideo prediction and extension from 4 true frames, DDIM {args.conditioning_steps} steps, blocks of {NUM_FRAMES} frames with 4 of context")
            print_header(CONDITIONING_COLUMNS)
            clips = moving_shapes(args.clips, num_frames=2 * NUM_FRAMES, image_size=IMAGE_SIZE, channels=CHANNELS, generator=torch.Generator().manual_seed(20_000))
            conditioning = conditioning_table(unet, "ddim", args.conditioning_steps, clips, args.weights_r, criteria, calls, args.sample_seeds[0])

    print(f"\ntotal {time.time() - total_start:.0f} s")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(dict(settings=vars(args), criteria=vars(criteria), data=data_row, samplers=samplers, conditioning=conditioning), indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
