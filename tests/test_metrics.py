"""Metrics: the Fréchet distance against an independent computation (scipy's sqrtm), FVD
and per-frame FID end to end on random network weights (no download), weight files read
safely and fetched once, and the motion-coherence scores of known good and bad videos."""

import pickle

import pytest
import torch

from video_diffusion_pytorch.metrics import (
    Criteria, I3DFeatures, InceptionFeatures, InceptionI3d, VideoMetrics, coherent_videos, frame_fid, frechet_distance,
    frechet_distance_of, frechet_video_distance, gaussian_statistics, motion_coherence, wilson_interval,
)  # fmt: skip
from video_diffusion_pytorch import GaussianDiffusion, Unet3D
from video_diffusion_pytorch.cli import main
from video_diffusion_pytorch.data import video_tensor_to_gif
from video_diffusion_pytorch.metrics import networks
from video_diffusion_pytorch.synthetic import moving_shapes

scipy_linalg = pytest.importorskip("scipy.linalg")


def clips(n, seed, frames=8):
    return moving_shapes(n, num_frames=frames, image_size=16, channels=1, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------ Fréchet distance


def scipy_frechet(a, b):
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    s_a, s_b = torch.cov(a.T).numpy(), torch.cov(b.T).numpy()
    root = scipy_linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + (s_a + s_b - 2 * root).trace())


def test_frechet_distance_matches_an_independent_computation():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    b = torch.randn(150, 6, generator=generator, dtype=torch.float64) @ torch.randn(6, 6, generator=generator, dtype=torch.float64) + 0.5
    assert frechet_distance_of(a, b) == pytest.approx(scipy_frechet(a, b), rel=1e-8)
    assert frechet_distance_of(a, a) == pytest.approx(0, abs=1e-9)
    # equal covariances: only the means count
    mu, sigma = gaussian_statistics(a)
    assert frechet_distance(mu, sigma, mu + 2, sigma) == pytest.approx(6 * 4, rel=1e-9)
    # more dimensions than samples (rank-deficient covariances) stays finite and agrees
    c, d = torch.randn(5, 12, dtype=torch.float64, generator=generator), torch.randn(7, 12, dtype=torch.float64, generator=generator)
    assert frechet_distance_of(c, d) == pytest.approx(scipy_frechet(c, d), rel=1e-5)


def test_frechet_distance_rejects_malformed_features():
    with pytest.raises(ValueError, match=r"at least 2 rows, got shape \(1, 4\)"):
        gaussian_statistics(torch.randn(1, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


# ------------------------------------------------------------ FVD on I3D


@pytest.fixture(scope="module")
def i3d():
    torch.manual_seed(0)
    network = InceptionI3d()
    for module in network.modules():  # batch statistics of a trained network, so features are not degenerate
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_var.fill_(0.1)
    return network


def test_i3d_has_the_released_parameter_names_and_loads_them_safely(i3d, tmp_path):
    names = set(i3d.state_dict())
    assert {"Conv3d_1a_7x7.conv3d.weight", "Conv3d_1a_7x7.bn.running_var", "Mixed_3b.b1b.conv3d.weight",
            "Mixed_5c.b3b.bn.bias", "logits.conv3d.weight", "logits.conv3d.bias"} <= names  # fmt: skip
    assert i3d.logits.conv3d.weight.shape == (400, 1024, 1, 1, 1)
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(i3d.state_dict(), path)
    loaded = I3DFeatures(weights=path, size=32)
    videos = clips(2, 0)
    torch.testing.assert_close(loaded(videos), I3DFeatures(i3d, size=32)(videos))
    assert loaded(videos).shape == (2, 400)


def test_fvd_is_zero_for_the_same_videos_and_grows_with_the_difference(i3d):
    features = I3DFeatures(i3d, size=32)
    real, other, noise = clips(12, 0), clips(12, 1), torch.rand(12, 1, 8, 16, 16, generator=torch.Generator().manual_seed(2))
    assert frechet_video_distance(real, real, network=features) == pytest.approx(0, abs=1e-6)
    same_kind = frechet_video_distance(real, other, network=features, batch_size=5)
    assert 0 < same_kind < frechet_video_distance(real, noise, network=features)
    with pytest.raises(ValueError, match="real have 8 frames, samples 6"):
        frechet_video_distance(real, clips(12, 1, frames=6), network=features)
    with pytest.raises(ValueError, match=r"real must be at least 2 videos .* got shape \(12, 1, 16, 16\)"):
        frechet_video_distance(real[:, :, 0], other, network=features)


# ------------------------------------------------------------ per-frame FID on Inception


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Random weights of the FID Inception, written as its weight file is."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = tmp_path_factory.mktemp("inception") / "empty.pth"
    torch.save({}, empty)
    with pytest.MonkeyPatch.context() as patch:  # build it with random weights, no download
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None)
        torch.manual_seed(0)
        network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    path = empty.with_name("weights-inception.pth")
    torch.save(network.state_dict(), path)
    return path


def test_inception_features_read_the_weight_file_and_see_grey_frames_as_rgb(inception_weights):
    features = InceptionFeatures(weights=inception_weights)
    grey = clips(1, 0, frames=2)[0].transpose(0, 1)  # (2, 1, h, w): two frames
    out = features(grey)
    assert out.shape == (2, 2048) and out.isfinite().all()
    torch.testing.assert_close(out, features(grey.expand(-1, 3, -1, -1)))


def test_frame_fid_compares_every_frame_as_an_image():
    def pixels(frames):  # a cheap stand-in for the Inception: 4x4 average-pooled pixels, (n, 16)
        return torch.nn.functional.adaptive_avg_pool2d(frames, 4).flatten(1)

    real, other = clips(16, 0), clips(16, 1)
    noise = torch.rand(16, 1, 8, 16, 16, generator=torch.Generator().manual_seed(2))
    # (n, 1, f, h, w) -> (n f, 16)
    real_f, other_f = (pixels(v.transpose(1, 2).flatten(0, 1)) for v in (real, other))
    assert frame_fid(real, other, network=pixels, batch_size=7) == pytest.approx(frechet_distance_of(real_f, other_f), rel=1e-9)
    assert 0 < frame_fid(real, other, network=pixels) < frame_fid(real, noise, network=pixels)


def test_weight_files_holding_code_are_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2), "hook": pickle.loads}, path)
    with pytest.raises(ValueError, match="is not a state dict of tensors"):
        I3DFeatures(weights=path)
    with pytest.raises(ValueError, match="is not a state dict of tensors"):
        InceptionFeatures(weights=path)
    with pytest.raises(FileNotFoundError, match="no weight file at"):
        I3DFeatures(weights=tmp_path / "missing.pt")


def test_weights_are_downloaded_once_into_the_hub_cache(tmp_path, monkeypatch):
    downloads = []

    def download(url, destination, progress=True):
        downloads.append(url)
        torch.save({"w": torch.ones(1)}, destination)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    first = networks.weights_file("https://example.invalid/models/net.pt")
    second = networks.weights_file("https://example.invalid/models/net.pt")
    assert first == second == tmp_path / "checkpoints" / "net.pt" and len(downloads) == 1
    assert [p.name for p in first.parent.iterdir()] == ["net.pt"]  # no temporary file left


# ------------------------------------------------------------ motion coherence


def test_motion_coherence_scores_known_good_and_bad_videos():
    criteria = Criteria.from_data(clips(256, 10))
    good = clips(64, 0)
    shuffled = good[:, :, torch.randperm(8, generator=torch.Generator().manual_seed(0))]  # the shape jumps about
    flicker = good * torch.tensor([1.0, 0.5] * 4).view(1, 1, 8, 1, 1)  # brightness alternates
    noise = torch.rand(64, 1, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    assert motion_coherence(good, criteria)["coherent_videos"] >= 0.95
    assert motion_coherence(good, criteria)["well_formed_frames"] >= 0.98
    assert coherent_videos(shuffled, criteria).float().mean() <= 0.2
    assert coherent_videos(flicker, criteria).float().mean() == 0
    scores = motion_coherence(noise, criteria)
    assert scores["coherent_videos"] == 0 and scores["well_formed_frames"] < 0.05


def test_wilson_interval():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(64, 64)[1] == 1.0
    with pytest.raises(ValueError, match="got 11 of 10"):
        wilson_interval(11, 10)


def test_video_metrics_compute_the_real_features_once_and_fetch_nothing_before_use(i3d, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("nothing is downloaded before the first score")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    real = clips(16, 0)
    VideoMetrics(real, ("fvd", "fid"))  # default networks: built on first use only
    seen = []

    def pixels(frames):
        seen.append(frames.shape[0])
        return torch.nn.functional.adaptive_avg_pool2d(frames, 4).flatten(1)

    metrics = VideoMetrics(real, ("fvd", "fid", "coherence"), i3d=I3DFeatures(i3d, size=32), inception=pixels, batch_size=4)
    good, bad = metrics(clips(16, 1)), metrics(torch.rand(16, 1, 8, 16, 16, generator=torch.Generator().manual_seed(3)))
    assert sum(seen) == 3 * 16 * 8 and max(seen) == 4 * 8  # real frames once, then each sample set; batches of 4 videos
    assert good["fvd"] < bad["fvd"] and good["fid"] < bad["fid"]
    assert good["coherence"] > 0.5 and bad["coherence"] == 0  # criteria from only 16 real clips are strict
    with pytest.raises(ValueError, match=r"metrics must be some of \('fvd', 'fid', 'coherence'\), got \['is'\]"):
        VideoMetrics(real, ("fvd", "is"))
    with pytest.raises(TypeError, match="samples must be a tensor"):
        metrics([1, 2])


# ------------------------------------------------------------ video-diffusion evaluate


def write_clips(folder, videos):
    folder.mkdir()
    for index, video in enumerate(videos):
        video_tensor_to_gif(video, folder / f"{index}.gif")
    return folder


def test_evaluate_command_scores_a_folder_of_samples_and_a_model(tmp_path, capsys, i3d):
    real = write_clips(tmp_path / "real", clips(24, 0, frames=4))
    good = write_clips(tmp_path / "good", clips(24, 1, frames=4))
    size = ["--image-size", "16", "--frames", "4", "--channels", "1"]
    assert main(["evaluate", str(real), str(good), "--metrics", "coherence", *size]) == 0
    assert "24 real and 24 generated videos of 4 frames, 16 px" in capsys.readouterr().out

    weights = tmp_path / "i3d.pt"
    torch.save(i3d.state_dict(), weights)
    few = write_clips(tmp_path / "few", clips(2, 2, frames=4))
    assert main(["evaluate", str(real), str(few), "--metrics", "fvd", "--i3d-weights", str(weights), "--max-real", "2", *size]) == 0
    assert float(capsys.readouterr().out.split("fvd: ")[1]) > 0

    torch.manual_seed(0)
    model = GaussianDiffusion(Unet3D(dim=8, dim_mults=(1, 2), channels=1), image_size=16, num_frames=4, channels=1, timesteps=10)
    folder = model.save_pretrained(tmp_path / "model")
    assert main(["evaluate", str(real), str(folder), "--metrics", "coherence", "--num", "3", "--batch-size", "2",
                 "--sampling-steps", "2", "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "sampled 3 videos" in out and "coherence: 0.0% of the videos" in out  # an untrained model makes noise

    assert main(["evaluate", str(real), str(tmp_path / "missing"), *size]) == 2
    assert "SAMPLES must be a folder of clips or a trained model" in capsys.readouterr().err


# ------------------------------------------------------------ Trainer milestones


def test_the_trainer_scores_its_milestone_samples(tmp_path, i3d):
    from tiny_training import make_clips, make_trainer

    real = make_clips(6)
    metrics = VideoMetrics(real, ("fvd", "coherence"), i3d=I3DFeatures(i3d, size=32))
    logs = []
    trainer = make_trainer(tmp_path / "results", train_num_steps=4, save_and_sample_every=2, num_sample_rows=2,
                           milestone_metrics=metrics)  # fmt: skip
    trainer.train(log_fn=logs.append)
    milestones = [log for log in logs if "sample" in log]
    assert len(milestones) == 2 and all(log["fvd"] > 0 and 0 <= log["coherence"] <= 1 for log in milestones)
