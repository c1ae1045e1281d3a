"""Which models a rank loads, from where, where they rest between uses, and the checks before any loads.

Every rank loads the DiT (in a background thread with ``runtime.overlap``, while the lead computes chunk 0's
conditioning). The lead of each replica also loads the tokenizer, MoGe and the session's T5; with
``parallel.tokenizer=group`` the other ranks load the tokenizer too, to share the encodes and the decode.
With ``checkpoints.random_weights=true`` every model whose path is unset gets seeded random weights instead
(tests, the demo, timing sweeps); such runs make frames that are not meaningful.

Offload (``runtime.offload=true``): the tokenizer, MoGe and T5 rest on the CPU and visit the GPU only for their
call (:class:`DeviceSwap`), the pattern of the official ``--offload_*`` flags without their reloading from
disk. The DiT runs 70 forwards per chunk and stays on the GPU. Moving the companions costs PCIe time per chunk
(about 0.1 s for the tokenizer's ~0.5 GB at 10 GB/s), which is why it is off by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from gen3c_dist.conditioning.depth import load_moge
from gen3c_dist.conditioning.sources import InputMode, input_mode
from gen3c_dist.conditioning.text import T5PromptEncoder, resolve_t5_dir
from gen3c_dist.conditioning.video_conditioner import ConditioningModels
from gen3c_dist.config import CacheConfig, GeneratedFrameDepth, RunConfig
from gen3c_dist.errors import InputError
from gen3c_dist.model.dit import GEN3CDiT
from gen3c_dist.model.tokenizer.config import VideoTokenizerConfig, tokenizer_preset
from gen3c_dist.model.tokenizer.video_tokenizer import VideoTokenizer
from gen3c_dist.model.weights import load_dit, random_dit
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.layout import ParallelLayout
from gen3c_dist.parallel.parallelize import parallelize_dit
from gen3c_dist.runner.background import Background, BackgroundWriter
from gen3c_dist.runner.jobs import VideoJob
from gen3c_dist.runner.replica import RunSettings
from gen3c_dist.shapes import num_chunks

logger = logging.getLogger(__name__)

# MoGe v1 with a ViT-S backbone: the random stand-in used when no MoGe weights are given and random weights
# are allowed. The released model (Ruicheng/moge-vitl) has the same structure with `dinov2_vitl14`.
TINY_MOGE_CONFIG = dict(
    encoder="dinov2_vits14", intermediate_layers=4, dim_proj=512, dim_upsample=[256, 128, 128],
    dim_times_res_block_hidden=2, num_res_blocks=2, remap_output="exp", res_block_norm="group_norm",
    num_tokens_range=[1200, 2500], last_res_blocks=0, last_conv_channels=32, last_conv_size=1,
)
DOWNLOADS = "see README section 'Checkpoints' for the official download commands"


# ---- where the conditioning models rest -------------------------------------------------------------------
class DeviceSwap:
    """Moves modules between their home device and the compute device around each use.

    ``home`` is where models are loaded and rest: the CPU when offloading, else the compute device.
    ``resident`` names the models currently visiting the compute device, ``visits`` every use in order (the
    tests read both). With offload off every ``use`` is a no-op; on a CPU run with offload on, the moves are
    CPU -> CPU no-ops but the bookkeeping still runs, which is what the CPU tests check.
    """

    def __init__(self, compute: torch.device, *, offload: bool) -> None:
        self.compute = torch.device(compute)
        self.home = torch.device("cpu") if offload else self.compute
        self.offload = offload
        self.resident: set[str] = set()
        self.visits: list[str] = []

    def _release(self) -> None:
        if self.compute.type == "cuda":
            torch.cuda.empty_cache()  # give the freed blocks back, so the DiT's activations can use them

    @contextlib.contextmanager
    def _visit(self, name: str, place: Callable[[torch.device], None]) -> Iterator[None]:
        place(self.compute)
        self.resident.add(name)
        self.visits.append(name)
        try:
            yield
        finally:
            place(self.home)
            self.resident.discard(name)
            self._release()

    @contextlib.contextmanager
    def use(self, name: str, module: nn.Module) -> Iterator[nn.Module]:
        """``module`` on the compute device for the duration of the block (MoGe, T5)."""
        if not self.offload:
            yield module
            return
        with self._visit(name, module.to):
            yield module

    @contextlib.contextmanager
    def use_tokenizer(self, tokenizer: VideoTokenizer, part: str) -> Iterator[VideoTokenizer]:
        """The tokenizer's ``encoder`` or ``decoder`` (and its latent statistics) on the compute device."""
        if part not in ("encoder", "decoder"):
            raise ValueError(f"tokenizer part must be 'encoder' or 'decoder', got {part!r}")
        if not self.offload:
            yield tokenizer
            return
        with self._visit(f"tokenizer.{part}", functools.partial(_place_tokenizer, tokenizer, part)):
            yield tokenizer


def _place_tokenizer(tokenizer: VideoTokenizer, part: str, device: torch.device) -> None:
    module = getattr(tokenizer, part)
    if module is not None:
        module.to(device)
    tokenizer.latent_mean = tokenizer.latent_mean.to(device)
    tokenizer.latent_std = tokenizer.latent_std.to(device)
    tokenizer.device = device  # encode/decode move their inputs to ``tokenizer.device``


class SessionTextEncoder:
    """The session's T5: built on the first prompt that misses the embedding cache, then kept for later videos.

    Building T5-11B reads ~20 GB from disk, so a batch must not rebuild it per video. ``open()`` lends it
    (see :data:`gen3c_dist.conditioning.text.EncoderOpener`), on the compute device for the call.
    """

    def __init__(self, t5_dir: Optional[str], swap: DeviceSwap) -> None:
        self.t5_dir, self.swap = t5_dir, swap
        self.encoder: Optional[T5PromptEncoder] = None

    @contextlib.contextmanager
    def open(self) -> Iterator[T5PromptEncoder]:
        if self.encoder is None:
            self.encoder = T5PromptEncoder(resolve_t5_dir(self.t5_dir), self.swap.home)
        with self.swap.use("t5", self.encoder.model):
            self.encoder.device = self.swap.compute  # token ids go where the model now is
            try:
                yield self.encoder
            finally:
                self.encoder.device = self.swap.home


# ---- checks before anything loads -------------------------------------------------------------------------
def needs_moge(jobs: list[VideoJob], cache: CacheConfig) -> bool:
    """MoGe runs for an image job: on its input image without a depth file, and on the last frame of every chunk
    but the final one. Never for a video or multi-view job: their depth is given and their cache never updated."""
    by_moge = cache.generated_frame_depth == GeneratedFrameDepth.moge
    return any(input_mode(job.input) == InputMode.image
               and (job.input.depth is None or (by_moge and num_chunks(job.input.num_frames) > 1)) for job in jobs)


def preflight_checkpoints(cfg: RunConfig, jobs: list[VideoJob]) -> None:
    """Every required weight path exists, or random weights are allowed; one clear error otherwise."""
    ck = cfg.checkpoints
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


# ---- loading ----------------------------------------------------------------------------------------------
def load_dit_for_run(cfg: RunConfig, *, device: torch.device, dtype: torch.dtype) -> GEN3CDiT:
    ck = cfg.checkpoints
    if ck.dit is None:
        logger.info("DiT: seeded random weights (checkpoints.random_weights)")
        return random_dit(cfg.model, seed=ck.random_seed, device=device, dtype=dtype)
    return load_dit(ck.dit, cfg.model, device=device, dtype=dtype, label="checkpoints.dit")


def load_tokenizer(cfg: RunConfig, *, device: torch.device, dtype: torch.dtype) -> VideoTokenizer:
    network = tokenizer_preset(cfg.tokenizer.preset)
    if cfg.checkpoints.tokenizer_dir is None:
        logger.info("tokenizer: seeded random weights (checkpoints.random_weights)")
        return VideoTokenizer.random(network, VideoTokenizerConfig(), seed=cfg.checkpoints.random_seed + 1, device=device, dtype=dtype)
    return VideoTokenizer.from_folder(cfg.checkpoints.tokenizer_dir, network, backend=cfg.tokenizer.backend, device=device, dtype=dtype)


def load_depth_model(cfg: RunConfig, *, device: torch.device) -> Any:
    if cfg.checkpoints.moge is not None:
        return load_moge(cfg.checkpoints.moge, device=device)
    from moge.model.v1 import MoGeModel  # only random-weight runs build one from scratch

    logger.info("MoGe: seeded random ViT-S weights (checkpoints.random_weights)")
    torch.manual_seed(cfg.checkpoints.random_seed + 2)
    return MoGeModel(**TINY_MOGE_CONFIG).to(device).eval()


def load_conditioning_models(cfg: RunConfig, jobs: list[VideoJob], *, lead: bool, device: torch.device,
                             dtype: torch.dtype) -> ConditioningModels:
    """The lead's tokenizer, MoGe and T5, or (``lead=False``) a sharing rank's tokenizer alone.

    MoGe stays in float32 (the official run uses fp16 autocast inside ``infer`` on the GPU). With
    ``runtime.offload`` the models load onto the CPU and visit ``device`` only while they run.
    """
    swap = DeviceSwap(device, offload=cfg.runtime.offload)
    moge = load_depth_model(cfg, device=swap.home) if lead and needs_moge(jobs, cfg.cache) else None
    text = SessionTextEncoder(cfg.checkpoints.t5_dir, swap) if lead and cfg.text.enabled else None
    tokenizer = load_tokenizer(cfg, device=swap.home, dtype=dtype)
    return ConditioningModels(tokenizer=tokenizer, moge=moge, placement=swap,
                              open_text_encoder=None if text is None else text.open)


def build_dit_forward(model: GEN3CDiT, cfg: RunConfig, layout: ParallelLayout, settings: RunSettings,
                      counter: Optional[CommCounter]) -> Callable:
    """This rank's DiT forward for the layout, with the configured kernel/compile/graph options."""
    forward_fn, notes = parallelize_dit(model, layout, cfg.runtime, device=settings.device, dtype=settings.dtype,
                                        counter=counter)
    for note in notes:
        logger.info(note)
    return forward_fn


@dataclasses.dataclass
class LoadedModels:
    conditioning: Optional[ConditioningModels]  # the lead's (or a sharing rank's tokenizer); None elsewhere
    dit: Background  # the DiT forward (context-parallel where the layout says), loading in the background
    writer: BackgroundWriter
    load_s: float  # seconds spent loading on the main thread (conditioning models)


def load_models(cfg: RunConfig, jobs: list[VideoJob], *, layout: ParallelLayout, settings: RunSettings,
                counter: Optional[CommCounter]) -> LoadedModels:
    """This rank's models for ``jobs``. The DiT's file reads and copies overlap the conditioning models' load."""
    device, dtype = settings.device, settings.dtype
    dit = Background(
        lambda: build_dit_forward(load_dit_for_run(cfg, device=device, dtype=dtype), cfg, layout, settings, counter),
        enabled=settings.overlap,
    )
    start = time.perf_counter()
    conditioning = None
    if layout.is_replica_lead or settings.tokenizer_shared:
        conditioning = load_conditioning_models(cfg, jobs, lead=layout.is_replica_lead, device=device, dtype=dtype)
    return LoadedModels(conditioning, dit, BackgroundWriter(enabled=settings.overlap), time.perf_counter() - start)
