"""Which models a rank loads, from where, and the checks that run before any of them is loaded.

Every rank loads the DiT. Only the lead rank of a video group loads the tokenizer, MoGe and (through the text
module, per video) T5: the other ranks receive the conditioning in a broadcast.
With ``checkpoints.random_weights=true`` every model whose path is unset gets seeded random weights instead
(tests, the demo, timing sweeps); such runs make frames that are not meaningful.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch

from gen3c_dist.config import CacheConfig, RunConfig
from gen3c_dist.errors import InputError
from gen3c_dist.model.dit import GEN3CDiT
from gen3c_dist.model.tokenizer.config import VideoTokenizerConfig, tokenizer_preset
from gen3c_dist.model.tokenizer.video_tokenizer import VideoTokenizer
from gen3c_dist.model.weights import load_dit, random_dit
from gen3c_dist.runner.conditioning_stage import ConditioningModels
from gen3c_dist.runner.jobs import VideoJob, check_num_frames
from gen3c_dist.runner.offload import DeviceSwap
from gen3c_dist.runner.text_encoder import SessionTextEncoder

logger = logging.getLogger(__name__)

# MoGe v1 with a ViT-S backbone: the random stand-in used when no MoGe weights are given and random weights
# are allowed. The released model (Ruicheng/moge-vitl) has the same structure with `dinov2_vitl14`.
TINY_MOGE_CONFIG = dict(
    encoder="dinov2_vits14", intermediate_layers=4, dim_proj=512, dim_upsample=[256, 128, 128],
    dim_times_res_block_hidden=2, num_res_blocks=2, remap_output="exp", res_block_norm="group_norm",
    num_tokens_range=[1200, 2500], last_res_blocks=0, last_conv_channels=32, last_conv_size=1,
)
GENERATED_FRAME_DEPTH = ("moge", "cache_render")
TOKENIZER_PLACEMENTS = ("group", "lead")
DOWNLOADS = "see README section 'Checkpoints' for the official download commands"


def needs_moge(jobs: list[VideoJob], cache: CacheConfig) -> bool:
    """MoGe runs for an input image without a depth file, and on the last frame of every chunk but the final one."""
    if cache.generated_frame_depth not in GENERATED_FRAME_DEPTH:
        raise InputError(f"cache.generated_frame_depth={cache.generated_frame_depth!r} is not one of {GENERATED_FRAME_DEPTH}")
    by_moge = cache.generated_frame_depth == "moge"
    return any(job.input.depth is None or (by_moge and check_num_frames(job.input.num_frames) > 1) for job in jobs)


def preflight_checkpoints(cfg: RunConfig, jobs: list[VideoJob]) -> None:
    """Every required weight path exists, or random weights are allowed; one clear error otherwise."""
    ck = cfg.checkpoints
    if cfg.parallel.tokenizer not in TOKENIZER_PLACEMENTS:
        raise InputError(f"parallel.tokenizer={cfg.parallel.tokenizer!r} is not one of {TOKENIZER_PLACEMENTS}")
    required = {"checkpoints.dit": ck.dit, "checkpoints.tokenizer_dir": ck.tokenizer_dir}
    if needs_moge(jobs, cfg.cache):
        required["checkpoints.moge"] = ck.moge
    if cfg.text.enabled:
        required["checkpoints.t5_dir"] = ck.t5_dir  # no random T5: a random prompt embedding means nothing
    for name, path in required.items():
        if path is None:
            if ck.random_weights and name != "checkpoints.t5_dir":
                continue
            hint = " (or text.enabled=false to use zero text embeddings)" if name == "checkpoints.t5_dir" else ""
            raise InputError(f"{name} is not set: give the local path{hint}; {DOWNLOADS}")
        if not os.path.exists(os.path.expanduser(path)):
            raise InputError(f"{name}={path}: no such file or folder; {DOWNLOADS}")


def load_dit_for_run(cfg: RunConfig, *, device: torch.device, dtype: torch.dtype) -> GEN3CDiT:
    ck = cfg.checkpoints
    if ck.dit is None:
        logger.info("DiT: seeded random weights (checkpoints.random_weights)")
        return random_dit(cfg.model, seed=ck.random_seed, device=device, dtype=dtype)
    return load_dit(ck.dit, cfg.model, device=device, dtype=dtype)


def load_tokenizer(cfg: RunConfig, *, device: torch.device, dtype: torch.dtype) -> VideoTokenizer:
    network = tokenizer_preset(cfg.tokenizer.preset)
    if cfg.checkpoints.tokenizer_dir is None:
        logger.info("tokenizer: seeded random weights (checkpoints.random_weights)")
        return VideoTokenizer.random(network, VideoTokenizerConfig(), seed=cfg.checkpoints.random_seed + 1, device=device, dtype=dtype)
    return VideoTokenizer.from_folder(cfg.checkpoints.tokenizer_dir, network, backend=cfg.tokenizer.backend, device=device, dtype=dtype)


def load_depth_model(cfg: RunConfig, *, device: torch.device) -> Any:
    from gen3c_dist.conditioning.depth import load_moge

    if cfg.checkpoints.moge is not None:
        return load_moge(cfg.checkpoints.moge, device=device)
    from moge.model.v1 import MoGeModel

    logger.info("MoGe: seeded random ViT-S weights (checkpoints.random_weights)")
    torch.manual_seed(cfg.checkpoints.random_seed + 2)
    return MoGeModel(**TINY_MOGE_CONFIG).to(device).eval()


def load_tokenizer_models(cfg: RunConfig, *, device: torch.device, dtype: torch.dtype) -> ConditioningModels:
    """A non-lead rank's share with ``parallel.tokenizer=group``: the tokenizer only (no depth model, no T5)."""
    swap = DeviceSwap(device, offload=cfg.runtime.offload)
    return ConditioningModels(tokenizer=load_tokenizer(cfg, device=swap.home, dtype=dtype), moge=None, swap=swap, text=None)


def load_conditioning_models(cfg: RunConfig, jobs: list[VideoJob], *, device: torch.device, dtype: torch.dtype) -> ConditioningModels:
    """Lead rank only. MoGe stays in float32 (the official run uses fp16 autocast inside ``infer`` on the GPU).

    With ``runtime.offload`` the models load onto the CPU and visit ``device`` only while they run.
    """
    swap = DeviceSwap(device, offload=cfg.runtime.offload)
    moge: Optional[Any] = load_depth_model(cfg, device=swap.home) if needs_moge(jobs, cfg.cache) else None
    text = SessionTextEncoder(cfg.checkpoints.t5_dir, swap) if cfg.text.enabled else None
    tokenizer = load_tokenizer(cfg, device=swap.home, dtype=dtype)
    return ConditioningModels(tokenizer=tokenizer, moge=moge, swap=swap, text=text)
