"""Fixture kind ``tokenizer``: raw CV8x8x8 encoder/decoder outputs (KINDS_geometry.md, "Kind `tokenizer`").

latent = encoder.jit(video)[0] and reconstruction = decoder.jit(expected latent), both before any mean/std
normalisation, computed with the native modules loaded through the strict ``encoder.jit``/``decoder.jit`` key
accounting from the fixture's combined state dict.
"""

from __future__ import annotations

import torch

from gen3c_dist.model.tokenizer import (
    TokenizerNetworkConfig, VideoDecoder, VideoEncoder, load_module_state, split_tokenizer_state_dict,
)
from tests.parity.fixture_case import FixtureCase


def run_case(case: FixtureCase) -> dict[str, torch.Tensor]:
    network = TokenizerNetworkConfig.from_official(case.config)
    encoder_state, decoder_state = split_tokenizer_state_dict(case.weights())
    encoder, decoder = VideoEncoder(network).eval(), VideoDecoder(network).eval()
    load_module_state(encoder, encoder_state, f"{case.weights_path} (encoder.jit keys)")
    load_module_state(decoder, decoder_state, f"{case.weights_path} (decoder.jit keys)")
    with torch.inference_mode():
        latent = encoder(case.tensors["video"])
        reconstruction = decoder(case.tensors["latent"])
    return {"latent": latent, "reconstruction": reconstruction}
