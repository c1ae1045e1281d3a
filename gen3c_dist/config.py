"""Typed configuration for gen3c_dist.

Plain dataclasses, importable without Hydra. ``register_configs()`` puts them in Hydra's ConfigStore; only
entry points call it. Every function receives the sub-config it needs, never the whole tree.

Model field names follow the official ``VideoExtendGeneralDIT`` constructor one to one, so an official config
dict maps onto :class:`ModelConfig` with :meth:`ModelConfig.from_official`.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Optional

from gen3c_dist.config_checks import check_fields, check_run_config
from gen3c_dist.errors import InputError

LATENT_CHANNELS = 16


class Choice(str, enum.Enum):
    """A config field with a fixed set of values. OmegaConf refuses any other value when the config is composed
    (naming the key and the choices), and ``python -m gen3c_dist.run --help`` lists them.

    Members are strings (``Choice.x == "x"``), so code and JSON records treat them as the plain names.
    """

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Backend(Choice):
    auto = "auto"  # nccl when CUDA is available, else gloo
    nccl = "nccl"
    gloo = "gloo"


class LayoutMode(Choice):
    auto = "auto"  # unset degrees are chosen from the world, the videos and the model (gen3c_dist.parallel.auto_layout)
    explicit = "explicit"  # unset degrees are 1, and data takes what the world leaves


class AttentionBackend(Choice):
    native = "native"  # Ulysses / ring / hybrid from the degrees
    ulysses = "ulysses"  # the same kernels, insisting on ulysses >= 2
    ring = "ring"  # the same kernels, insisting on ring >= 2
    deepspeed = "deepspeed"  # DeepSpeed DistributedAttention (Ulysses only)
    transformer_engine = "transformer_engine"  # TE context parallel (CUDA)


class TokenizerPlacement(Choice):
    group = "group"  # the replica shares the cache render, the encodes and a sequence-parallel decode
    lead = "lead"  # the lead does all of it (the official placement)


class GeneratedFrameDepth(Choice):
    moge = "moge"  # official: MoGe on the generated frame, aligned to the cache
    cache_render = "cache_render"  # the cache's own depth at that camera (random-weight runs)


class TrajectoryType(Choice):
    left = "left"
    right = "right"
    up = "up"
    down = "down"
    zoom_in = "zoom_in"
    zoom_out = "zoom_out"
    clockwise = "clockwise"
    counterclockwise = "counterclockwise"


class CameraRotation(Choice):
    center_facing = "center_facing"
    no_rotation = "no_rotation"
    trajectory_aligned = "trajectory_aligned"


class VideoFormat(Choice):
    """How ``input.video`` is read (gen3c_dist.conditioning.video_inputs)."""

    auto = "auto"  # told apart by the files: a .pt, a folder with rgb.mp4, or a ViPE folder with rgb/
    directory = "directory"  # official gen3c_dynamic.py folder: rgb.mp4, depth.npz, mask.npz, camera.npz
    pt = "pt"  # official .pt of 5 tensors: image, depth, mask, w2c, intrinsics
    vipe = "vipe"  # a ViPE result folder (rgb/, depth/ EXR zips, pose/, intrinsics/), or rgb/<name>.mp4 in one


class TokenizerBackend(Choice):
    native = "native"  # this repo's network, loaded from the TorchScript weights
    torchscript = "torchscript"  # run encoder.jit / decoder.jit as they are


class TokenizerPreset(Choice):
    cv8x8x8_720p = "cv8x8x8_720p"  # Cosmos-Tokenize1-CV8x8x8-720p
    tiny = "tiny"  # same structure, 4 base channels: tests and the demo


class GuidancePolicy(Choice):
    official = "official"  # both passes at every guidance value; g = 1 means F = 2 Fc - Fu
    nonofficial_skip_uncond_at_guidance_1 = "nonofficial_skip_uncond_at_guidance_1"  # F = Fc at g = 1


class DType(Choice):
    auto = "auto"  # bfloat16 on CUDA, float32 on the CPU
    bfloat16 = "bfloat16"
    bf16 = "bfloat16"  # alias
    float32 = "float32"
    fp32 = "float32"  # alias
    float16 = "float16"


class AttentionKernel(Choice):
    """Single-device attention kernel (gen3c_dist.model.kernels)."""

    auto = "auto"
    sdpa = "sdpa"
    sdpa_flash = "sdpa_flash"
    sdpa_cudnn = "sdpa_cudnn"
    sdpa_efficient = "sdpa_efficient"
    sdpa_math = "sdpa_math"
    flash_attn = "flash_attn"
    te = "te"

# Official constructor arguments that GEN3C fixes; ``from_official`` accepts them only with these values.
_FIXED_OFFICIAL_VALUES: dict[str, Any] = {
    "concat_padding_mask": True,
    "block_config": "FA-CA-MLP",
    "block_x_format": "THWBD",
    "use_cross_attn_mask": False,
    "pos_emb_cls": "rope3d",
    "pos_emb_learnable": False,
    "pos_emb_interpolation": "crop",
    "affline_emb_norm": True,
    "use_adaln_lora": True,
    "extra_per_block_abs_pos_emb": True,
    "extra_per_block_abs_pos_emb_type": "learnable",
    "add_augment_sigma_embedding": False,
}
# Accepted and ignored: the learnable absolute embedding never reads its extrapolation ratios (spec section 2.1).
_IGNORED_OFFICIAL_KEYS = ("extra_h_extrapolation_ratio", "extra_w_extrapolation_ratio", "extra_t_extrapolation_ratio")


@dataclass
class ModelConfig:
    """GEN3C DiT architecture (spec section 2.1). Names are the official constructor arguments."""

    model_channels: int = 4096
    num_blocks: int = 28
    num_heads: int = 32
    crossattn_emb_channels: int = 1024
    adaln_lora_dim: int = 256
    patch_spatial: int = 2
    patch_temporal: int = 1
    in_channels: int = 81  # 16 latent + 1 condition mask + 32 per frame buffer; the padding mask adds one more
    out_channels: int = 16
    max_img_h: int = 240  # latent units; the learnable pos-emb table has max_img_h // patch_spatial rows
    max_img_w: int = 240
    max_frames: int = 128
    mlp_ratio: float = 4.0
    rope_h_extrapolation_ratio: float = 1.0
    rope_w_extrapolation_ratio: float = 1.0
    rope_t_extrapolation_ratio: float = 2.0
    frame_buffer_max: int = 2

    def __post_init__(self) -> None:
        check_fields("model", self)  # sizes first: the checks below divide by them
        expected_in = LATENT_CHANNELS + 1 + 2 * LATENT_CHANNELS * self.frame_buffer_max
        if self.in_channels != expected_in:
            raise InputError(
                f"model.in_channels={self.in_channels} does not match model.frame_buffer_max={self.frame_buffer_max}: "
                f"GEN3C needs 16 + 1 + 32*frame_buffer_max = {expected_in}"
            )
        if self.model_channels % self.num_heads:
            raise InputError(f"model.model_channels={self.model_channels} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2 or (self.head_dim // 6 * 2) % 2 or (self.head_dim - 2 * (self.head_dim // 6 * 2)) % 2:
            raise InputError(f"head dim {self.head_dim} cannot be split into even t/h/w RoPE parts")
        if self.out_channels != LATENT_CHANNELS:
            raise InputError(f"model.out_channels must be {LATENT_CHANNELS} (the tokenizer's latent channels)")

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def patch_in_features(self) -> int:
        """Features per patch into the embedder: (in_channels + padding mask) * pt * ps * ps."""
        return (self.in_channels + 1) * self.patch_temporal * self.patch_spatial**2

    @property
    def patch_out_features(self) -> int:
        return self.out_channels * self.patch_temporal * self.patch_spatial**2

    @classmethod
    def from_official(cls, official: dict[str, Any]) -> "ModelConfig":
        """Build from an official ``VideoExtendGeneralDIT`` argument dict (plus ``frame_buffer_max``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in official.items():
            if key in names:
                kwargs[key] = value
            elif key in _FIXED_OFFICIAL_VALUES:
                if value != _FIXED_OFFICIAL_VALUES[key]:
                    raise InputError(f"official config {key}={value!r} is not supported; GEN3C uses {_FIXED_OFFICIAL_VALUES[key]!r}")
            elif key not in _IGNORED_OFFICIAL_KEYS:
                raise InputError(f"official config key {key!r} is unknown to gen3c_dist.ModelConfig")
        if "frame_buffer_max" not in kwargs and "in_channels" in kwargs:
            kwargs["frame_buffer_max"] = (kwargs["in_channels"] - LATENT_CHANNELS - 1) // (2 * LATENT_CHANNELS)
        return cls(**kwargs)


MODEL_PRESETS: dict[str, ModelConfig] = {
    # The released GEN3C-Cosmos-7B network: 7,237,257,216 parameters.
    "gen3c_cosmos_7b": ModelConfig(),
    # Random-weight model for CPU tests and the demo; its frames are not meaningful.
    "tiny": ModelConfig(
        model_channels=128, num_blocks=2, num_heads=4, crossattn_emb_channels=64, adaln_lora_dim=32,
    ),
}


def model_preset(name: str) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise InputError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return dataclasses.replace(MODEL_PRESETS[name])


@dataclass
class CheckpointConfig:
    """Where weights come from. Nothing is downloaded at run time: every path is local."""

    dit: Optional[str] = None  # official model.pt, a safetensors file/index, or a `gen3c_dist.convert` folder
    tokenizer_dir: Optional[str] = None  # Cosmos-Tokenize1-CV8x8x8-720p: encoder.jit, decoder.jit, mean_std.pt
    t5_dir: Optional[str] = None  # google-t5/t5-11b saved with transformers
    moge: Optional[str] = None  # MoGe v1 (Ruicheng/moge-vitl) model.pt
    # Seeded random weights for every model whose path above is unset: tests, the demo and timing sweeps.
    # The frames such a run makes are not meaningful; a real run leaves this off and fails on a missing path.
    random_weights: bool = False
    random_seed: int = 0


@dataclass
class DistributedConfig:
    """How the process group is created (context-parallel layout lives in ParallelConfig)."""

    backend: Backend = Backend.auto
    timeout_s: float = 600.0  # every collective gives up after this long instead of hanging
    fault_grace_s: float = 5.0  # after a failure, how long ranks wait for the store report / acknowledgements


@dataclass
class ParallelConfig:
    """Layout of the ranks: data-parallel replicas x cfg axis x context-parallel group (Ulysses x ring).

    world = data * cfg * ulysses * ring. Ranks are numbered data-major, Ulysses-minor, so a Ulysses group is
    consecutive ranks (one node's NVLink) and the ring runs across them. Validated by gen3c_dist.parallel.layout.

    ``layout=auto`` (the default) chooses every degree left unset (null) before any weights load: one video gets
    every rank, cfg = 2 whenever both guidance passes run, Ulysses inside a node up to what the heads allow, the
    ring across nodes, and for a batch the replica count with the shortest projected makespan
    (gen3c_dist.parallel.auto_layout). A degree that is set is kept. ``layout=explicit``: unset degrees are 1 and
    ``data`` takes what the world leaves, with no search.
    """

    layout: LayoutMode = LayoutMode.auto
    ulysses: Optional[int] = None  # Ulysses degree: all-to-all from sequence shards to head shards
    ring: Optional[int] = None  # ring degree: K/V blocks passed around the ring
    cfg: Optional[int] = None  # 2 runs the cond and uncond passes of each step on different ranks
    data: Optional[int] = None  # data-parallel replicas; null: chosen (auto) or world / (cfg * ulysses * ring)
    attention: AttentionBackend = AttentionBackend.native
    # Tokenizer work of a replica: "group" spreads the chunk's cache render and encodes over its ranks and
    # decodes sequence-parallel across them (equal to a single decode); "lead" runs all of it on the lead rank.
    tokenizer: TokenizerPlacement = TokenizerPlacement.group


@dataclass
class InputConfig:
    """One video to generate (a batch JSONL line overrides these per line).

    Exactly one of ``image`` (image to video), ``video`` (video to video) and ``key_frames`` (multi-view) is set;
    it chooses the job's mode (gen3c_dist.conditioning.sources).
    """

    image: Optional[str] = None  # image to video: the input image (PNG/JPEG); one of image / video / key_frames
    depth: Optional[str] = None  # image: depth file (.npz/.npy/16-bit .png) used instead of MoGe for the input image
    depth_png_scale: Optional[float] = None  # image: depth units per PNG value; required for a 16-bit depth PNG
    intrinsics: Optional[str] = None  # image: pixel intrinsics of a .npy/.png depth: .npy [3, 3], .json or .txt file
    video: Optional[str] = None  # video to video: folder (rgb.mp4 + npz), .pt, ViPE folder or its rgb/<name>.mp4
    video_format: VideoFormat = VideoFormat.auto  # video: how input.video is read; auto: from its files
    start_frame: int = 0  # video: first source frame used; frames [start_frame, start_frame + num_frames) are re-shot
    vipe_read_mask: bool = False  # video, ViPE only: keep only the points under mask/<name>.zip (official: all points)
    key_frames: Optional[str] = None  # multi-view: the official npz (images_key_frames, ...) or a cameras.json folder
    prompt: str = ""
    negative_prompt: Optional[str] = None  # None: the official default negative prompt (spec 4.6)
    num_frames: int = 121  # 120K + 1 (121, 241, 361, ...); chunks of 121 frames overlap by one
    height: int = 704  # video directory/.pt and multi-view inputs are not resized: they must be height x width
    width: int = 1280
    fps: int = 24  # output fps; also rescales the temporal RoPE (spec 2.5)
    seed: int = 1


@dataclass
class TrajectoryConfig:
    """The target camera path. Image: a built-in path from the input camera. Video: the built-in offsets composed
    per frame onto the source cameras (L_i @ w2c_i). Multi-view: the npz's w2cs_all (type/rotation unused)."""

    type: TrajectoryType = TrajectoryType.left  # built-in path (image and video jobs)
    rotation: CameraRotation = CameraRotation.center_facing
    distance: float = 0.3  # movement_distance
    center_depth: float = 1.0  # fixed in the official script (spec 7.7, quirk 3)
    file: Optional[str] = None  # JSON/npz of w2c [N,4,4] + K; replaces type/rotation, w2cs_all; video: K optional


@dataclass
class CacheConfig:
    filter_points_threshold: float = 0.05  # >= 1 disables the depth-edge filter (spec 7.4)
    foreground_masking: bool = False  # drop warped depth-edge points; video: any length (official: 121 frames only)
    noise_aug_strength: float = 0.0  # image jobs: warp noise, most on the newest buffer (4D, key-frame caches: none)
    # Depth of each generated frame fed back into the cache: "moge" (official, aligned to the cache) or
    # "cache_render" (the cache's own depth rendered at that camera, no depth model). The second exists for
    # random-weight runs (demo, tests), whose frames carry no geometry a depth model could recover.
    generated_frame_depth: GeneratedFrameDepth = GeneratedFrameDepth.moge


@dataclass
class TextConfig:
    enabled: bool = True  # False: zero embeddings for prompt and negative prompt (official --disable_prompt_encoder)
    cache_dir: Optional[str] = None  # on-disk cache of T5 embeddings keyed by model and prompt
    max_length: int = 512


@dataclass
class TokenizerConfig:
    preset: TokenizerPreset = TokenizerPreset.cv8x8x8_720p
    backend: TokenizerBackend = TokenizerBackend.native


@dataclass
class SamplerConfig:
    steps: int = 35
    guidance: float = 1.0  # F = Fc + g (Fc - Fu); 1 is not "off" (spec 4.5)
    guidance_policy: GuidancePolicy = GuidancePolicy.official
    sigma_min: float = 0.0002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    condition_augment_sigma: float = 0.001


@dataclass
class OutputConfig:
    dir: str = "outputs"
    name: str = "output"  # file stem; must stay inside dir
    save_latents: bool = False  # final latents of every chunk as safetensors
    save_buffer: bool = False  # also write <name>_cache.mp4: the cache renders side by side with the video
    resume: bool = True  # continue a multi-chunk run from its last complete chunk; skip complete outputs
    overwrite: bool = False  # replace an earlier run's files of this name instead of refusing other settings


@dataclass
class BatchConfig:
    jsonl: Optional[str] = None  # one JSON object per line: image / video / key_frames, prompt, trajectory, frames, seed, name, ...
    shard_index: int = 0  # this job's share of the lines: index % num_shards == shard_index
    num_shards: int = 1


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: DType = DType.auto
    progress: bool = True  # tqdm bar on rank 0, shown only when stderr is a terminal
    # Memory: move the tokenizer, MoGe and T5 to the CPU whenever they are not running (smaller GPUs).
    offload: bool = False
    # Overlap: load the DiT in a background thread while the lead computes chunk-0 conditioning, and write
    # outputs in a background thread while the next chunk (or video) starts. null (auto): on with CUDA, off on
    # the CPU, where the background threads compete with the ranks for the same cores (on a 2-core box it made
    # a 2-process demo ~10% slower; benchmarks/results/cpu-amd-epyc-2c/README.md).
    overlap: Optional[bool] = None
    # Single-device speed (CUDA only; "auto"/false on the CPU). See gen3c_dist/model/acceleration.py.
    attention_kernel: AttentionKernel = AttentionKernel.auto
    compile: bool = False  # torch.compile every DiT block
    cuda_graphs: bool = False  # capture the fixed-shape DiT forward in a CUDA graph and replay it each step


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    input: InputConfig = field(default_factory=InputConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        check_run_config(self)  # every number's type, range and finiteness, at composition (config_checks.py)


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (entry points only)."""
    from hydra.core.config_store import ConfigStore  # Hydra only in entry points: configs import without it

    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(group="model", name="model_schema", node=ModelConfig)
    # The model presets have one source, MODEL_PRESETS: `model=tiny` on the command line picks this entry.
    for name, preset in MODEL_PRESETS.items():
        store.store(group="model", name=name, node=preset)
