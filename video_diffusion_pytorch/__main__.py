"""`python -m video_diffusion_pytorch ...` runs the `video-diffusion` command."""

import sys

from .cli import main

sys.exit(main())
