"""Cosmos-Tokenize1-CV8x8x8-720p, the continuous causal video tokenizer of GEN3C, as native PyTorch.

Entry points:
* :class:`VideoTokenizer` (``from_folder``, ``from_state_dicts``, ``random``): GEN3C's normalised, chunked
  ``encode`` / ``decode`` / ``decode_to_uint8``;
* :class:`VideoEncoder` / :class:`VideoDecoder`: the networks behind ``encoder.jit`` / ``decoder.jit``, with the
  released key names;
* :class:`TokenizerNetworkConfig` and :func:`tokenizer_preset` (``"cv8x8x8_720p"``, ``"tiny"``).
"""

from gen3c_dist.model.tokenizer.config import (
    TOKENIZER_PRESETS, TokenizerNetworkConfig, VideoTokenizerConfig, tokenizer_preset,
)
from gen3c_dist.model.tokenizer.decoder import VideoDecoder
from gen3c_dist.model.tokenizer.encoder import VideoEncoder
from gen3c_dist.model.tokenizer.loading import (
    TokenizerLoadError, load_mean_std, load_module_state, read_jit_state_dict, split_tokenizer_state_dict,
)
from gen3c_dist.model.tokenizer.random_init import random_init_
from gen3c_dist.model.tokenizer.video_tokenizer import BACKENDS, VideoTokenizer, pixels_to_uint8

__all__ = [
    "BACKENDS",
    "TOKENIZER_PRESETS",
    "TokenizerLoadError",
    "TokenizerNetworkConfig",
    "VideoDecoder",
    "VideoEncoder",
    "VideoTokenizer",
    "VideoTokenizerConfig",
    "load_mean_std",
    "load_module_state",
    "pixels_to_uint8",
    "random_init_",
    "read_jit_state_dict",
    "split_tokenizer_state_dict",
    "tokenizer_preset",
]
