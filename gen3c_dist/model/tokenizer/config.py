"""Configuration of the Cosmos CV8x8x8 continuous causal video tokenizer (spec section 5).

``TokenizerNetworkConfig`` mirrors the official ``CausalContinuousVideoTokenizer`` constructor dict
(``cosmos_predict1/tokenizer/networks/configs.py: continuous_video_8x8x8_720p``) field by field, so an official
dict, such as a fixture JSON ``config``, maps onto it with :meth:`TokenizerNetworkConfig.from_official`.
``VideoTokenizerConfig`` holds what the GEN3C wrapper adds around the network: the chunk length, the latent
statistics layout and sigma_data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from gen3c_dist.errors import InputError
from gen3c_dist.shapes import CHUNK_FRAMES

# Official constructor keys that select code paths; only these values are implemented here.
_FIXED_OFFICIAL_VALUES: dict[str, Any] = {
    "formulation": "AE",
    "encoder": "FACTORIZED",
    "decoder": "FACTORIZED",
    "patch_method": "haar",
}
_IGNORED_OFFICIAL_KEYS = ("name",)


@dataclass(frozen=True)
class TokenizerNetworkConfig:
    """Structure of the encoder/decoder networks. Defaults are the released 720p model (channels 128)."""

    in_channels: int = 3
    out_channels: int = 3
    channels: int = 128
    channels_mult: tuple[int, ...] = (2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    dropout: float = 0.0
    resolution: int = 1024
    patch_size: int = 4
    patch_method: str = "haar"
    latent_channels: int = 16
    z_channels: int = 16
    z_factor: int = 1
    # The factorized encoder/decoder hard-code GroupNorm(1) per frame; the field is kept for the official dict.
    num_groups: int = 1
    legacy_mode: bool = False
    spatial_compression: int = 8
    temporal_compression: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels_mult", tuple(self.channels_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if self.patch_method != "haar":
            raise ValueError(f"tokenizer patch_method={self.patch_method!r} is not supported; only 'haar'")
        for name in ("patch_size", "spatial_compression", "temporal_compression"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"tokenizer {name}={value} must be a power of two")
        levels = len(self.channels_mult)
        if not 0 <= self.num_spatial_downs <= levels or not 0 <= self.num_temporal_downs <= levels:
            raise ValueError(
                f"tokenizer compression {self.temporal_compression}x{self.spatial_compression} with patch_size "
                f"{self.patch_size} needs more than the {levels} resolution levels of channels_mult"
            )

    @property
    def num_patch_levels(self) -> int:
        """Haar levels of the patcher (2 for patch_size 4)."""
        return int(math.log2(self.patch_size))

    @property
    def num_spatial_downs(self) -> int:
        return int(math.log2(self.spatial_compression)) - self.num_patch_levels

    @property
    def num_temporal_downs(self) -> int:
        return int(math.log2(self.temporal_compression)) - self.num_patch_levels

    @property
    def patched_channels(self) -> int:
        """Channels after the 3D patcher: every Haar level multiplies them by 8."""
        return self.in_channels * self.patch_size**3

    @classmethod
    def from_official(cls, official: dict[str, Any]) -> "TokenizerNetworkConfig":
        """Build from an official constructor dict (for example a fixture JSON ``config``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in official.items():
            if key in names:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
            if key in _FIXED_OFFICIAL_VALUES and value != _FIXED_OFFICIAL_VALUES[key]:
                raise ValueError(f"official tokenizer config {key}={value!r} is not supported; "
                                 f"GEN3C uses {_FIXED_OFFICIAL_VALUES[key]!r}")
            if key not in names and key not in _FIXED_OFFICIAL_VALUES and key not in _IGNORED_OFFICIAL_KEYS:
                raise ValueError(f"official tokenizer config key {key!r} is unknown to TokenizerNetworkConfig")
        return cls(**kwargs)


TOKENIZER_PRESETS: dict[str, TokenizerNetworkConfig] = {
    # Cosmos-Tokenize1-CV8x8x8-720p, the tokenizer GEN3C ships with.
    "cv8x8x8_720p": TokenizerNetworkConfig(),
    # Same structure with 4 base channels: random weights for CPU tests; the fixtures use 4 or 6.
    "tiny": TokenizerNetworkConfig(channels=4),
}


def tokenizer_preset(name: str) -> TokenizerNetworkConfig:
    if name not in TOKENIZER_PRESETS:
        raise InputError(f"unknown tokenizer preset {name!r}; choose one of {sorted(TOKENIZER_PRESETS)}")
    return TOKENIZER_PRESETS[name]


@dataclass(frozen=True)
class VideoTokenizerConfig:
    """The GEN3C wrapper around the network (spec sections 5.1-5.2)."""

    pixel_chunk_duration: int = CHUNK_FRAMES
    temporal_compression: int = 8
    spatial_compression: int = 8
    latent_ch: int = 16
    sigma_data: float = 0.5
    # Chunks per encoder/decoder call; they only bound memory (chunks are independent).
    max_enc_batch_size: int = 8
    max_dec_batch_size: int = 4

    def __post_init__(self) -> None:
        # T = 1 goes to the *image* VAE in the official code (image_mean_std.pt); GEN3C never does that, so the
        # wrapper only accepts true video chunks of 1 + k * temporal_compression frames.
        chunk = self.pixel_chunk_duration
        if chunk < 2 or (chunk - 1) % self.temporal_compression:
            raise ValueError(
                f"pixel_chunk_duration={chunk} must be 1 + k*{self.temporal_compression} with k >= 1 (GEN3C: 121)"
            )

    @property
    def latent_chunk_duration(self) -> int:
        """Latent frames per chunk: 1 + (pixel_chunk_duration - 1) / temporal_compression (16 for 121)."""
        return 1 + (self.pixel_chunk_duration - 1) // self.temporal_compression
