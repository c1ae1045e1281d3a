"""Native CV8x8x8 tokenizer: key layout, loaders (TorchScript round trip, strict accounting), GEN3C wrapper."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from gen3c_dist.model.tokenizer import (
    TokenizerLoadError, TokenizerNetworkConfig, VideoDecoder, VideoEncoder, VideoTokenizer, VideoTokenizerConfig,
    load_module_state, pixels_to_uint8, tokenizer_preset,
)
from gen3c_dist.model.tokenizer.patching import HaarPatcher3D, HaarUnpatcher3D

FIXTURE_JSON = Path(__file__).parent / "fixtures/reference/tokenizer/ch4_b1_t9_32x48.json"
TINY = tokenizer_preset("tiny")
CHUNK9 = VideoTokenizerConfig(pixel_chunk_duration=9)  # 2 latent frames per chunk


def _video(t: int, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def tiny_tok() -> VideoTokenizer:
    return VideoTokenizer.random(TINY, CHUNK9, seed=3)


@pytest.fixture(scope="module")
def jit_folder(tmp_path_factory, tiny_tok) -> Path:
    """encoder.jit / decoder.jit traced from the tiny native modules, plus a channel-major mean_std.pt."""
    folder = tmp_path_factory.mktemp("cv8x8x8_tiny")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning: the T > 1 upsampling branch is fixed by the example
        enc = torch.jit.trace(tiny_tok.encoder, _video(9), check_trace=False)
        dec = torch.jit.trace(tiny_tok.decoder, torch.randn(1, 16, 2, 2, 2), check_trace=False)
        torch.jit.save(enc, str(folder / "encoder.jit"))  # (and the save's deprecation notice)
        torch.jit.save(dec, str(folder / "decoder.jit"))
    idx = torch.arange(256, dtype=torch.float32)  # value of (channel c, latent frame t) sits at c*16 + t
    torch.save((idx / 100.0, 1.0 + idx / 1000.0), folder / "mean_std.pt")
    return folder


def test_state_dict_keys_are_the_released_jit_keys():
    meta = json.loads(FIXTURE_JSON.read_text())
    enc, dec = VideoEncoder(TINY).state_dict(), VideoDecoder(TINY).state_dict()
    assert list(enc) == meta["weights"]["encoder_jit_keys"]
    assert list(dec) == meta["weights"]["decoder_jit_keys"]
    assert "encoder.down.1.downsample.conv1.conv3d.weight" not in enc  # unused hybrid convs carry no keys
    assert enc["encoder.patcher3d.patch_size_buffer"].dtype == torch.int32
    assert enc["encoder.patcher3d._arange"].dtype == torch.int64
    with torch.device("meta"):  # the real 720p network: same keys, 128 base channels
        real = VideoEncoder(tokenizer_preset("cv8x8x8_720p")).state_dict()
    assert list(real) == list(enc)
    assert real["encoder.conv_in.0.conv3d.weight"].shape == (128, 192, 1, 3, 3)


def test_config_from_official_reads_fixture_and_rejects_unknowns():
    meta = json.loads(FIXTURE_JSON.read_text())
    cfg = TokenizerNetworkConfig.from_official(meta["config"])
    assert cfg == TINY and cfg.patched_channels == 192
    assert (cfg.num_spatial_downs, cfg.num_temporal_downs) == (1, 1)
    with pytest.raises(ValueError, match="formulation"):
        TokenizerNetworkConfig.from_official({**meta["config"], "formulation": "VAE"})
    with pytest.raises(ValueError, match="bogus"):
        TokenizerNetworkConfig.from_official({**meta["config"], "bogus": 1})


def test_haar_patcher_is_inverted_by_unpatcher():
    video = _video(9, 8, 16)
    patched = HaarPatcher3D(4)(video)
    assert patched.shape == (1, 192, 3, 2, 4)
    # Band 0 of the second level is the mean of each 4x4x4 block (first frame counted 4 times).
    block = torch.cat([video[:, :, :1].expand(-1, -1, 3, -1, -1), video], 2)[:, 0, 4:8, 0:4, 0:4]
    torch.testing.assert_close(patched[0, 0, 1, 0, 0] * 8, block.mean() * 8, atol=1e-5, rtol=0)
    torch.testing.assert_close(HaarUnpatcher3D(4)(patched), video, atol=1e-5, rtol=0)


def test_encoder_is_causal_in_time(tiny_tok):
    video = _video(17)
    later_changed = video.clone()
    later_changed[:, :, 9:] = -video[:, :, 9:]  # frames 9..16 only feed latent frame 2
    a, b = tiny_tok.encode_raw(video[:, :, :9]), tiny_tok.encoder(later_changed)
    full = tiny_tok.encoder(video)
    torch.testing.assert_close(full[:, :, :2], b[:, :, :2], atol=1e-6, rtol=0)
    assert (full[:, :, 2] - b[:, :, 2]).abs().max() > 1e-3
    assert a.shape == (1, 16, 2, 2, 2)


def test_jit_round_trip_native_and_torchscript(jit_folder, tiny_tok):
    native = VideoTokenizer.from_folder(jit_folder, TINY, CHUNK9)
    scripted = VideoTokenizer.from_folder(jit_folder, TINY, CHUNK9, backend="torchscript")
    stored_mean = (torch.arange(256.0) / 100.0).view(16, 16)[:, :2]
    torch.testing.assert_close(native.latent_mean[0, :, :, 0, 0], stored_mean, rtol=0, atol=0)
    video = _video(9, seed=1)
    z_native, z_script = native.encode(video), scripted.encode(video)
    expected = 0.5 * (tiny_tok.encoder(video) - native.latent_mean) / native.latent_std
    torch.testing.assert_close(z_native, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(z_script, z_native, rtol=0, atol=1e-5)
    torch.testing.assert_close(scripted.decode(z_native), native.decode(z_native), rtol=0, atol=1e-4)


def test_wrong_keys_are_reported_with_file_name(jit_folder, tmp_path):
    for name in ("encoder.jit", "mean_std.pt"):
        shutil.copy(jit_folder / name, tmp_path / name)
    shutil.copy(jit_folder / "encoder.jit", tmp_path / "decoder.jit")  # the classic swap
    with pytest.raises(TokenizerLoadError, match=r"decoder\.jit does not fit.*unexpected keys \['encoder\.") as err:
        VideoTokenizer.from_folder(tmp_path, TINY, CHUNK9)
    assert "missing keys ['decoder." in str(err.value)
    state = VideoEncoder(TINY).state_dict()
    state["encoder.conv_in.0.conv3d.weights"] = state.pop("encoder.conv_in.0.conv3d.weight")
    with pytest.raises(TokenizerLoadError, match=r"my\.jit.*unexpected keys \['encoder\.conv_in\.0\.conv3d\.weights'\]"
                                                 r".*missing keys \['encoder\.conv_in\.0\.conv3d\.weight'\]"):
        load_module_state(VideoEncoder(TINY), state, "my.jit")


def test_shape_and_buffer_mismatches_are_reported():
    state = VideoEncoder(TINY).state_dict()
    with pytest.raises(TokenizerLoadError, match="shape mismatches"):
        load_module_state(VideoEncoder(TokenizerNetworkConfig(channels=6)), state, "six.jit")
    state["encoder.patcher3d.patch_size_buffer"] = torch.tensor([2], dtype=torch.int32)
    with pytest.raises(TokenizerLoadError, match="patch_size_buffer"):
        load_module_state(VideoEncoder(TINY), state, "p2.jit")
    del state["encoder.patcher3d.patch_size_buffer"]  # rebuilt buffers may be absent (diffusers-style files)
    load_module_state(VideoEncoder(TINY), state, "no_buffers.jit")


def test_missing_file_names_folder_and_file(jit_folder, tmp_path):
    for name in ("encoder.jit", "mean_std.pt"):
        shutil.copy(jit_folder / name, tmp_path / name)
    with pytest.raises(TokenizerLoadError, match=rf"{tmp_path} lacks decoder\.jit"):
        VideoTokenizer.from_folder(tmp_path, TINY, CHUNK9)
    encoder_only = VideoTokenizer.from_folder(tmp_path, TINY, CHUNK9, with_decoder=False)
    assert encoder_only.encode(_video(9)).shape == (1, 16, 2, 2, 2)
    with pytest.raises(RuntimeError, match="without a decoder"):
        encoder_only.decode(torch.zeros(1, 16, 2, 2, 2))


def test_chunk_length_is_checked(tiny_tok):
    with pytest.raises(ValueError, match="T=10 frames.*pixel_chunk_duration=9"):
        tiny_tok.encode(_video(10))
    with pytest.raises(ValueError, match="latent_chunk_duration=2"):
        tiny_tok.decode(torch.zeros(1, 16, 3, 2, 2))
    with pytest.raises(ValueError, match="pixel_chunk_duration=1 "):
        VideoTokenizerConfig(pixel_chunk_duration=1)


def test_chunks_are_encoded_and_decoded_independently(tiny_tok):
    tok = VideoTokenizer(CHUNK9, tiny_tok.encoder, tiny_tok.decoder, torch.randn(1, 16, 2, 1, 1),
                         torch.rand(1, 16, 2, 1, 1) + 0.5)
    video = _video(18, seed=2)
    z = tok.encode(video)
    torch.testing.assert_close(z, torch.cat([tok.encode(video[:, :, :9]), tok.encode(video[:, :, 9:])], 2),
                               rtol=0, atol=1e-5)
    raw = tok.encoder(video[:, :, 9:])
    torch.testing.assert_close(z[:, :, 2:], 0.5 * (raw - tok.latent_mean) / tok.latent_std, rtol=0, atol=1e-6)
    out = tok.decode(z)
    assert out.shape == video.shape
    torch.testing.assert_close(out[:, :, 9:], tok.decoder(z[:, :, 2:] / 0.5 * tok.latent_std + tok.latent_mean),
                               rtol=0, atol=1e-4)  # batch 2 vs batch 1 convs: float32 noise only


def test_uint8_decode_truncates_and_is_frame_major():
    values = torch.tensor([-3.0, -1.0, 0.0, 0.99, 1.0, 5.0])  # -> 0, 0, 127.5, 253.725, 255, 255
    video = torch.zeros(1, 3, 6, 2, 1)
    video[0, 0, :, 0, 0] = values
    video[0, 1] = -1.0
    video[0, 2] = 1.0
    frames = pixels_to_uint8(video)
    assert frames.shape == (6, 2, 1, 3) and frames.dtype == torch.uint8
    assert frames[:, 0, 0, 0].tolist() == [0, 0, 127, 253, 255, 255]
    assert frames[..., 1].eq(0).all() and frames[..., 2].eq(255).all()


def test_decode_to_uint8_and_bf16(tiny_tok):
    frames = tiny_tok.decode_to_uint8(torch.randn(1, 16, 2, 2, 3))
    assert frames.shape == (9, 16, 24, 3) and frames.dtype == torch.uint8
    stored = (torch.zeros(256), torch.ones(256))  # mean_std.pt layout: 16 channels x 16 latent frames, flat
    bf16 = VideoTokenizer.from_state_dicts(TINY, CHUNK9, tiny_tok.encoder.state_dict(), None, stored,
                                           dtype=torch.bfloat16)
    video = _video(9)
    z16 = bf16.encode(video.bfloat16())
    assert z16.dtype == torch.bfloat16 and bf16.latent_mean.dtype == torch.bfloat16
    torch.testing.assert_close(z16.float(), tiny_tok.encode(video), rtol=0.05, atol=0.1)
