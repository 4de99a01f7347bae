from pathlib import Path

from setuptools import find_packages, setup

version: dict = {}
exec(Path("video_diffusion_pytorch/version.py").read_text(), version)

setup(
    name="video-diffusion-pytorch",
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks"]),
    version=version["__version__"],
    license="MIT",
    description="Video Diffusion Models (Ho et al. 2022) in PyTorch: text-to-video and unconditional video generation",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    url="https://github.com/video-diffusion-pytorch/video-diffusion-pytorch",
    keywords=["artificial intelligence", "deep learning", "diffusion", "video generation", "text-to-video"],
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.4",  # torch.get_autocast_dtype(device_type)
        "torchvision>=0.16",
        "einops>=0.6",
        "einops-exts>=0.0.4",
        "rotary-embedding-torch>=0.3",
        "transformers>=4.30",
        "pillow>=9.0",
        "tqdm>=4.60",
        "accelerate>=0.26",
        "safetensors>=0.4",
        "huggingface-hub>=0.20",
        "matplotlib>=3.5",
        "numpy>=1.21",
        "torch-fidelity>=0.3",
    ],
    entry_points={"console_scripts": ["video-diffusion = video_diffusion_pytorch.cli:main"]},
    extras_require={
        "test": ["pytest>=7", "av>=11", "scipy>=1.7", "tensorboard>=2.14"],
        "video": ["av>=11"],
        "tracking": ["tensorboard>=2.14"],
    },
    classifiers=[
        "Development Status :: 4 - Beta",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
    ],
)
