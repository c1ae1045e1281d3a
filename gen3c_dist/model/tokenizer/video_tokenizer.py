"""GEN3C's video tokenizer: chunked, normalised encode/decode around the CV8x8x8 networks (spec sections 5.1-5.2).

* ``encode(video) = sigma_data * (E(video) - mean) / std`` per ``pixel_chunk_duration`` chunk (121 frames);
* ``decode(z) = D(z / sigma_data * std + mean)`` per ``latent_chunk_duration`` chunk (16 latent frames);
* ``decode_to_uint8`` quantises as the official pipeline, truncating.

Precision follows the official ``VideoJITTokenizer``: the networks run in ``dtype`` (bf16 on the GPU, float32 on
the CPU), ``mean``/``std`` are stored in ``dtype`` and the normalisation arithmetic runs in the dtype of the
tensor passed in. ``backend="torchscript"`` runs the released ``encoder.jit``/``decoder.jit`` as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from gen3c_dist.model.tokenizer.config import TokenizerNetworkConfig, VideoTokenizerConfig
from gen3c_dist.model.tokenizer.decoder import VideoDecoder
from gen3c_dist.model.tokenizer.encoder import VideoEncoder
from gen3c_dist.model.tokenizer.loading import (
    DECODER_FILE, ENCODER_FILE, MEAN_STD_FILE, latent_stats_from_pair, load_mean_std, load_module_state,
    load_torchscript, read_jit_state_dict, require_files,
)
from gen3c_dist.model.tokenizer.random_init import random_init_

BACKENDS = ("native", "torchscript")


def pixels_to_uint8(video_BCTHW: torch.Tensor) -> torch.Tensor:
    """Decoded video in [-1, 1] -> uint8 frames (T, H, W, 3), exactly as spec section 5.2.

    ``((1 + x).clamp(0, 2) / 2 * 255).to(uint8)``: the cast truncates (254.9 -> 254), on purpose, like the
    official ``_run_tokenizer_decoding``; the arithmetic runs in the input's dtype (bf16 on the GPU).
    """
    if video_BCTHW.dim() != 5 or video_BCTHW.shape[0] != 1 or video_BCTHW.shape[1] != 3:
        raise ValueError(f"expected a video of shape (1, 3, T, H, W), got {tuple(video_BCTHW.shape)}")
    unit_BCTHW = (1.0 + video_BCTHW).clamp(0, 2) / 2
    return (unit_BCTHW[0].permute(1, 2, 3, 0) * 255).to(torch.uint8)


def _chunked(fn: Callable[[torch.Tensor], torch.Tensor], x_BCTHW: torch.Tensor, chunk: int,
             max_batch: int) -> torch.Tensor:
    """Apply ``fn`` to every ``chunk``-frame piece (chunks become batch items, at most ``max_batch`` per call)."""
    b, c, t, h, w = x_BCTHW.shape
    n = t // chunk
    pieces_NCTHW = x_BCTHW.reshape(b, c, n, chunk, h, w).transpose(1, 2).reshape(b * n, c, chunk, h, w)
    outs = [fn(pieces_NCTHW[i : i + max_batch]) for i in range(0, b * n, max_batch)]
    out_NCTHW = torch.cat(outs, dim=0)
    _, c2, t2, h2, w2 = out_NCTHW.shape
    return out_NCTHW.reshape(b, n, c2, t2, h2, w2).transpose(1, 2).reshape(b, c2, n * t2, h2, w2)


def _first_output(out: torch.Tensor | tuple) -> torch.Tensor:
    """The released ``encoder.jit`` returns ``(latent, (0, 0))``; the native encoder the latent itself."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _check_compatible(network: TokenizerNetworkConfig, config: VideoTokenizerConfig) -> None:
    """The wrapper's chunk arithmetic must describe the network it wraps."""
    pairs = (("temporal_compression", network.temporal_compression, config.temporal_compression),
             ("spatial_compression", network.spatial_compression, config.spatial_compression),
             ("latent channels", network.latent_channels * network.z_factor, config.latent_ch))
    bad = [f"{name}: network {a} vs wrapper {b}" for name, a, b in pairs if a != b]
    if bad:
        raise ValueError("tokenizer network and wrapper configs disagree: " + "; ".join(bad))


class VideoTokenizer:
    """Encoder/decoder pair plus latent statistics; either part may be absent (encoder-only conditioning).

    The modules are moved to ``device``/``dtype`` in place and put in eval mode.
    """

    def __init__(self, config: VideoTokenizerConfig, encoder: nn.Module | None, decoder: nn.Module | None,
                 latent_mean: torch.Tensor, latent_std: torch.Tensor, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        lt = config.latent_chunk_duration
        want = (1, config.latent_ch, lt, 1, 1)
        if tuple(latent_mean.shape) != want or tuple(latent_std.shape) != want:
            raise ValueError(f"latent mean/std must have shape {want}, got {tuple(latent_mean.shape)} and "
                             f"{tuple(latent_std.shape)}")
        self.config, self.device, self.dtype = config, torch.device(device), dtype
        self.encoder = None if encoder is None else encoder.to(device=self.device, dtype=dtype).eval()
        self.decoder = None if decoder is None else decoder.to(device=self.device, dtype=dtype).eval()
        # Stored in the network dtype, like the official buffers (bf16 with is_bf16=True).
        self.latent_mean = latent_mean.to(device=self.device, dtype=dtype)
        self.latent_std = latent_std.to(device=self.device, dtype=dtype)

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_folder(cls, folder: str | Path, network: TokenizerNetworkConfig | None = None,
                    config: VideoTokenizerConfig | None = None, *, backend: str = "native",
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    with_encoder: bool = True, with_decoder: bool = True) -> "VideoTokenizer":
        """Load ``encoder.jit``, ``decoder.jit`` and ``mean_std.pt`` from a Cosmos-Tokenize1 folder."""
        if backend not in BACKENDS:
            raise ValueError(f"tokenizer backend {backend!r} is unknown; choose one of {BACKENDS}")
        network = network or TokenizerNetworkConfig()
        config = config or VideoTokenizerConfig()
        _check_compatible(network, config)
        wanted = ((ENCODER_FILE,) if with_encoder else ()) + ((DECODER_FILE,) if with_decoder else ())
        paths = require_files(folder, wanted + (MEAN_STD_FILE,))
        mean, std = load_mean_std(paths[MEAN_STD_FILE], config.latent_ch, config.latent_chunk_duration)
        parts: list[nn.Module | None] = []
        for name, make in ((ENCODER_FILE, VideoEncoder), (DECODER_FILE, VideoDecoder)):
            if name not in paths:
                parts.append(None)
            elif backend == "torchscript":
                parts.append(load_torchscript(paths[name]))
            else:
                module = make(network)
                load_module_state(module, read_jit_state_dict(paths[name]), str(paths[name]))
                parts.append(module)
        return cls(config, parts[0], parts[1], mean, std, device=device, dtype=dtype)

    @classmethod
    def from_state_dicts(cls, network: TokenizerNetworkConfig, config: VideoTokenizerConfig,
                         encoder_state: dict[str, torch.Tensor] | None,
                         decoder_state: dict[str, torch.Tensor] | None, mean_std: tuple[torch.Tensor, torch.Tensor],
                         *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                         source: str = "state dict") -> "VideoTokenizer":
        """Native modules from ``encoder.jit``/``decoder.jit``-keyed dicts; ``mean_std`` as stored in the file."""
        _check_compatible(network, config)
        encoder = decoder = None
        if encoder_state is not None:
            encoder = VideoEncoder(network)
            load_module_state(encoder, encoder_state, f"{source} (encoder)")
        if decoder_state is not None:
            decoder = VideoDecoder(network)
            load_module_state(decoder, decoder_state, f"{source} (decoder)")
        mean, std = latent_stats_from_pair(*mean_std, config.latent_ch, config.latent_chunk_duration, source)
        return cls(config, encoder, decoder, mean, std, device=device, dtype=dtype)

    @classmethod
    def random(cls, network: TokenizerNetworkConfig, config: VideoTokenizerConfig, seed: int = 0, *,
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "VideoTokenizer":
        """Seeded random weights with mean 0 / std 1 statistics: for tests and the tiny demo only."""
        _check_compatible(network, config)
        encoder = random_init_(VideoEncoder(network), seed)
        decoder = random_init_(VideoDecoder(network), seed + 1)
        shape = (1, config.latent_ch, config.latent_chunk_duration, 1, 1)
        return cls(config, encoder, decoder, torch.zeros(shape), torch.ones(shape), device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------------- encoding
    def _check_video(self, video_BCTHW: torch.Tensor) -> None:
        cfg = self.config
        if video_BCTHW.dim() != 5 or video_BCTHW.shape[1] != 3:
            raise ValueError(f"expected a video (B, 3, T, H, W), got shape {tuple(video_BCTHW.shape)}")
        t, h, w = video_BCTHW.shape[2:]
        if t % cfg.pixel_chunk_duration:
            raise ValueError(f"video has T={t} frames; the tokenizer encodes chunks of pixel_chunk_duration="
                             f"{cfg.pixel_chunk_duration} frames, so T must be a multiple of it")
        if h % cfg.spatial_compression or w % cfg.spatial_compression:
            raise ValueError(f"video size {h}x{w} must be a multiple of {cfg.spatial_compression} in H and W")

    @torch.inference_mode()
    def encode_raw(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """Encoder output before normalisation, in the input's dtype: (B, 16, n*Lt, H/8, W/8)."""
        if self.encoder is None:
            raise RuntimeError("this tokenizer was built without an encoder")
        self._check_video(video_BCTHW)
        in_dtype = video_BCTHW.dtype

        def run(chunk_NCTHW: torch.Tensor) -> torch.Tensor:
            return _first_output(self.encoder(chunk_NCTHW.to(device=self.device, dtype=self.dtype))).to(in_dtype)

        return _chunked(run, video_BCTHW, self.config.pixel_chunk_duration, self.config.max_enc_batch_size)

    @torch.inference_mode()
    def encode(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """Video in [-1, 1] -> normalised latent ``sigma_data * (E(x) - mean) / std`` (spec section 5.2)."""
        raw_BCTHW = self.encode_raw(video_BCTHW)
        return self.normalise(raw_BCTHW)

    def normalise(self, raw_BCTHW: torch.Tensor) -> torch.Tensor:
        """Per (channel, latent frame) statistics, repeated for every chunk; arithmetic in the input dtype."""
        chunks = raw_BCTHW.shape[2] // self.config.latent_chunk_duration
        mean = self.latent_mean.to(raw_BCTHW.dtype).repeat(1, 1, chunks, 1, 1)
        std = self.latent_std.to(raw_BCTHW.dtype).repeat(1, 1, chunks, 1, 1)
        return (raw_BCTHW - mean) / std * self.config.sigma_data

    # ------------------------------------------------------------------------------------------------- decoding
    def check_decodable(self, latent_BCTHW: torch.Tensor) -> None:
        """A decoder is loaded and the latent has the tokenizer's channels and whole latent chunks."""
        if self.decoder is None:
            raise RuntimeError("this tokenizer was built without a decoder")
        cfg = self.config
        if latent_BCTHW.dim() != 5 or latent_BCTHW.shape[1] != cfg.latent_ch:
            raise ValueError(f"expected a latent (B, {cfg.latent_ch}, T, H, W), got {tuple(latent_BCTHW.shape)}")
        if latent_BCTHW.shape[2] % cfg.latent_chunk_duration:
            raise ValueError(f"latent has T={latent_BCTHW.shape[2]} frames; it must be a multiple of "
                             f"latent_chunk_duration={cfg.latent_chunk_duration}")

    @torch.inference_mode()
    def decode(self, latent_BCTHW: torch.Tensor) -> torch.Tensor:
        """Normalised latent -> video in about [-1, 1], in the latent's dtype: ``D(z / sigma * std + mean)``."""
        self.check_decodable(latent_BCTHW)
        cfg = self.config
        in_dtype = latent_BCTHW.dtype
        scaled_BCTHW = latent_BCTHW / cfg.sigma_data

        def run(chunk_NCTHW: torch.Tensor) -> torch.Tensor:
            chunk_NCTHW = chunk_NCTHW.to(self.device)
            raw = chunk_NCTHW * self.latent_std.to(in_dtype) + self.latent_mean.to(in_dtype)
            return self.decoder(raw.to(self.dtype)).to(in_dtype)

        return _chunked(run, scaled_BCTHW, cfg.latent_chunk_duration, cfg.max_dec_batch_size)

    def decode_to_uint8(self, latent_BCTHW: torch.Tensor) -> torch.Tensor:
        """Normalised latent (1, 16, Lt, h, w) -> uint8 frames (T, H, W, 3) (spec section 5.2)."""
        return pixels_to_uint8(self.decode(latent_BCTHW))
