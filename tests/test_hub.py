"""save_pretrained / from_pretrained: a self-describing folder rebuilds the same model."""

import json

import pytest
import torch
from safetensors import safe_open

from tiny_training import TINY, make_diffusion, single_thread  # noqa: F401
from video_diffusion_pytorch import GaussianDiffusion, Unet3D
from video_diffusion_pytorch import hub, pretrained


def assert_same_function(a, b, cond=None):
    torch.manual_seed(0)
    x, t = torch.randn(2, 3, 3, 8, 8), torch.tensor([1, 7])
    with torch.no_grad():
        torch.testing.assert_close(a(x, t, cond=cond), b(x, t, cond=cond), rtol=0, atol=0)


def test_unet_round_trip(tmp_path):
    torch.manual_seed(0)
    unet = Unet3D(**{**TINY, "dim_mults": (1, 2, 2)}, cond_dim=6, init_dim=12)
    unet.save_pretrained(tmp_path / "unet")
    assert sorted(p.name for p in (tmp_path / "unet").iterdir()) == ["config.json", "model.safetensors"]

    loaded = Unet3D.from_pretrained(tmp_path / "unet")
    assert loaded.config == unet.config
    assert_same_function(unet, loaded, cond=torch.randn(2, 6))


def test_diffusion_round_trip_records_the_denoiser(tmp_path):
    diffusion = make_diffusion()
    diffusion.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["class"] == "GaussianDiffusion" and config["config"]["timesteps"] == 10
    assert config["denoise_fn"] == {"class": "Unet3D", "config": {**pretrained.jsonable(diffusion.denoise_fn.config)}}

    loaded = GaussianDiffusion.from_pretrained(str(tmp_path / "model"))
    assert set(loaded.state_dict()) == set(diffusion.state_dict())
    for name, value in diffusion.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert_same_function(diffusion.denoise_fn, loaded.denoise_fn)


def test_shared_rotary_embedding_is_stored_once_and_stays_shared(tmp_path):
    unet = Unet3D(**TINY)
    unet.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        rotary = [name for name in weights.keys() if "rotary_emb" in name]
    assert len(rotary) == 1
    loaded = Unet3D.from_pretrained(tmp_path)
    temporal = [m.rotary_emb for m in loaded.modules() if getattr(m, "rotary_emb", None) is not None]
    assert len(temporal) > 1 and all(r is temporal[0] for r in temporal)


def test_wrong_class_and_broken_folders(tmp_path):
    Unet3D(**TINY).save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="holds a Unet3D, not a GaussianDiffusion"):
        GaussianDiffusion.from_pretrained(tmp_path / "unet")

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Unet3D.from_pretrained(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        Unet3D.from_pretrained(tmp_path / "file")

    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    config["config"]["from_the_future"] = 1
    (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot build Unet3D.*from_the_future"):
        Unet3D.from_pretrained(tmp_path / "unet")


def test_a_name_that_is_no_folder_goes_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    asked = []
    Unet3D(**TINY).save_pretrained(tmp_path / "snapshot")

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        asked.append((repo_id, revision, sorted(allow_patterns)))
        if repo_id == "someone/missing":
            raise huggingface_hub.errors.LocalEntryNotFoundError("offline and not in the cache")
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)
    assert isinstance(Unet3D.from_pretrained("someone/tiny-unet", revision="v1"), Unet3D)
    with pytest.raises(FileNotFoundError, match="'someone/missing' is not a local folder.*offline"):
        Unet3D.from_pretrained("someone/missing")
    assert asked == [
        ("someone/tiny-unet", "v1", ["config.json", "model.safetensors"]),
        ("someone/missing", None, ["config.json", "model.safetensors"]),
    ]


def test_only_the_packages_classes_are_described():
    class Custom(Unet3D):
        pass

    with pytest.raises(TypeError, match="only Unet3D and GaussianDiffusion"):
        hub.describe_model(Custom(**TINY))
    with pytest.raises(ValueError, match="names class 'os.system'"):
        hub.build_model({"class": "os.system", "config": {}})
