"""The `video-diffusion` command: `train`, `demo`, `sample`, `extend`, `interpolate`, `export`, `evaluate`.

Argument parsing only; the work is done by the Trainer, the models and the library's
loading functions. Bad input (a missing folder, an unreadable checkpoint, text for a model
without text conditioning, ...) ends with a one-line message and exit status 2, not a
traceback. One module per command group: `train` (train, demo), `generate` (sample,
extend, interpolate), `export`, `evaluate`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..host_memory import keep_freed_host_memory
from ..trainer import NonFiniteLossError
from ..video_io import MissingVideoSupportError
from .common import PROG, UsageError
from .evaluate import add_evaluate_command
from .export import add_export_command
from .generate import add_generation_commands
from .train import add_demo_command, add_train_command

__all__ = ["PROG", "UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; `--help` of each shows every option's default."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Video diffusion models (Ho et al. 2022): train, sample, extend, interpolate, export, evaluate."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_command(commands)
    add_demo_command(commands)
    add_generation_commands(commands)
    add_export_command(commands)
    add_evaluate_command(commands)
    return parser


def _explicit_options(argv: Sequence[str]) -> set[str]:
    """The destinations of the options given on the command line (not left at their default)."""
    probe = build_parser()
    for subparser in probe._subparsers._group_actions[0].choices.values():
        for action in subparser._actions:
            action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv))) - {"command", "run"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error argparse has already reported
        return int(exit.code or 0)
    args.explicit = _explicit_options(argv)
    # the command owns its process: large activations are freed and allocated again on
    # every step, and glibc would otherwise fault their pages in anew each time
    keep_freed_host_memory()
    try:
        return args.run(args)
    except (ValueError, OSError, MissingVideoSupportError, NonFiniteLossError) as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
