"""`video-diffusion export`: a trained model as a `save_pretrained` folder, optionally
pushed to the Hugging Face Hub."""

from __future__ import annotations

import argparse

from ..checkpoint import load_model
from .common import HelpFormatter


def run_export(args: argparse.Namespace) -> int:
    folder = load_model(args.source, weights=args.weights).save_pretrained(args.folder)
    print(f"wrote {folder}: load it with GaussianDiffusion.from_pretrained({str(folder)!r})")
    if args.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.push_to_hub, private=args.private, exist_ok=True)
        commit = api.upload_folder(repo_id=args.push_to_hub, folder_path=folder, commit_message=args.commit_message)
        print(f"pushed to {args.push_to_hub}: {commit}")
    return 0


def add_export_command(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="write a trained model as a save_pretrained folder", formatter_class=HelpFormatter)
    export.set_defaults(run=run_export)
    export.add_argument("source", help="a model-N.pt written by the Trainer, or a results folder (its latest checkpoint)")
    export.add_argument("folder", help="the folder to write config.json and model.safetensors into")
    export.add_argument("--weights", choices=("ema", "model"), default="ema", help="which weights of a Trainer checkpoint")
    export.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hugging Face Hub repository")
    export.add_argument("--private", action="store_true", help="create the Hub repository as private")
    export.add_argument("--commit-message", default="Upload video-diffusion-pytorch model", help="the Hub commit's message")
