"""gen3c_dist: distributed inference runner for NVIDIA GEN3C.

torch is listed with a floor only, so an existing CUDA torch on a GPU machine is kept as it is. On a CPU-only
machine install ``torch==2.13.0`` first (``make setup`` does), or pip resolves a multi-GB CUDA build.
MoGe (``depth``) is installed separately with ``pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3``:
a plain ``dlr-moge`` requirement drags in gradio and a torchvision that is broken on CPU torch, and the
unrelated PyPI package ``utils3d`` must never be installed.
"""

from setuptools import find_packages, setup

CORE = [
    "torch>=2.4",
    "numpy>=1.26",
    "safetensors>=0.4",
    "hydra-core>=1.3",
    "omegaconf>=2.3",
    "imageio>=2.34",
    "imageio-ffmpeg>=0.5",
    "einops>=0.7",  # patchify, unpatchify and the Ulysses layouts, written as the spec's rearrange patterns
    "tqdm>=4.66",
    "pillow>=10",
]

EXTRAS = {
    "text": ["transformers>=4.44"],
    # MoGe's real runtime needs; the moge package itself is installed with --no-deps (see module docstring).
    "depth": ["opencv-python-headless>=4.8", "scipy>=1.11", "huggingface_hub>=0.23"],
    "ds": ["deepspeed>=0.15"],
    # CUDA machines only, built with --no-build-isolation; every import of these is guarded.
    "gpu": ["transformer-engine[pytorch]>=1.12", "flash-attn>=2.6"],
    "bench": ["matplotlib>=3.8"],
    # ViPE depth: EXR members of a zip, read as streams by OpenEXR.File (3.5.3 is the release tested).
    "video": ["OpenEXR>=3.5.3"],
}
EXTRAS["test"] = (["pytest>=8"] + EXTRAS["text"] + EXTRAS["depth"] + EXTRAS["ds"] + EXTRAS["bench"]
                  + EXTRAS["video"])

setup(
    name="gen3c_dist",
    version="0.1.0",
    description="Context-parallel multi-GPU inference runner for GEN3C (Cosmos-1.0-7B camera-controlled video)",
    packages=find_packages(include=["gen3c_dist", "gen3c_dist.*"]),
    package_data={"gen3c_dist": ["assets/*", "assets/demo_video/*", "assets/demo_multiview/*"]},
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "gen3c-run=gen3c_dist.run:main",
            "gen3c-convert=gen3c_dist.convert:main",
            "gen3c-sweep=gen3c_dist.perf.sweep:main",
            "gen3c-plan=gen3c_dist.plan:main",
        ]
    },
)
