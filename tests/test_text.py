"""T5 prompt embeddings (gen3c_dist.conditioning.text) with a tiny local T5 and an offline tokenizer."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")

from gen3c_dist.conditioning import text as text_mod  # noqa: E402
from gen3c_dist.conditioning.text import (  # noqa: E402
    DEFAULT_NEGATIVE_PROMPT,
    EmbeddingCache,
    T5PromptEncoder,
    encode_prompts,
    t5_identity,
)

D_MODEL = 64
SHORT = 32  # max_length for tests that do not check the official 512 (keeps them fast on 2 cores)
WORDS = ["a", "cat", "dog", "the", "video", "sky", "red", "walks", "over", "bridge"]


def _tokenizer() -> "transformers.T5TokenizerFast":
    """A T5 tokenizer built offline: <pad>=0, </s>=1, <unk>=2, '▁' and a few words (Unigram)."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + word, -1.0) for word in WORDS]
    return transformers.T5TokenizerFast(vocab=vocab, extra_ids=0)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("t5")
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=len(tokenizer), d_model=D_MODEL, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    )
    transformers.T5EncoderModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def load_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every T5EncoderModel.from_pretrained call (i.e. every time T5 is really constructed)."""
    calls: list[str] = []
    original = transformers.T5EncoderModel.from_pretrained

    def counting(path: str, *args: object, **kwargs: object) -> object:
        calls.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", counting)
    return calls


def test_tokenizer_appends_eos(t5_dir: str) -> None:
    tokenizer = transformers.T5TokenizerFast.from_pretrained(t5_dir, local_files_only=True)
    ids = tokenizer(["a cat walks"]).input_ids[0]
    assert ids[-1] == tokenizer.eos_token_id == 1 and len(ids) == 4
    assert tokenizer([""]).input_ids[0] == [1]  # the empty prompt is EOS only (spec section 6)


def test_encode_matches_the_model_and_zeroes_padding(t5_dir: str) -> None:
    encoder = T5PromptEncoder(t5_dir)
    assert not encoder.model.training and encoder.model.dtype == torch.float32
    emb = encoder.encode("the red dog walks over a bridge")
    assert emb.shape == (1, 512, D_MODEL) and emb.dtype == torch.float32
    n_tokens = 7 + 1  # seven words and </s>
    assert (emb[0, :n_tokens].abs().sum(-1) > 0).all()
    assert (emb[0, n_tokens:] == 0).all()
    ids = encoder.tokenizer(["the red dog walks over a bridge"], return_tensors="pt").input_ids
    with torch.no_grad():
        direct = encoder.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(emb[:, :n_tokens], direct)  # no padding in `ids`: same tokens, same result
    emb[0, 0, 0] = 1.0  # an ordinary tensor, not an inference-mode one


def test_empty_prompt_and_truncation(t5_dir: str) -> None:
    encoder = T5PromptEncoder(t5_dir)
    empty = encoder.encode("", SHORT)
    assert (empty[0, 0] != 0).any() and (empty[0, 1:] == 0).all()
    long = encoder.encode(" ".join(["cat"] * 40), max_length=16)
    assert long.shape == (1, 16, D_MODEL) and (long[0].abs().sum(-1) > 0).all()


def test_negative_prompt_rules(t5_dir: str) -> None:
    kwargs = dict(t5_dir=t5_dir, embed_dim=D_MODEL, max_length=SHORT)
    default = encode_prompts("a cat", **kwargs)
    encoder = T5PromptEncoder(t5_dir)
    torch.testing.assert_close(default.prompt, encoder.encode("a cat", SHORT))
    torch.testing.assert_close(default.negative, encoder.encode(DEFAULT_NEGATIVE_PROMPT, SHORT))
    for empty in ("", None):  # official: no negative prompt -> the uncond branch reuses the positive embedding
        out = encode_prompts("a cat", empty, **kwargs)
        assert out.negative is out.prompt


def test_disabled_encoder_gives_zeros_and_loads_nothing(load_counter: list[str]) -> None:
    out = encode_prompts("a cat", t5_dir=None, disable_prompt_encoder=True)
    for emb in (out.prompt, out.negative):
        assert emb.shape == (1, 512, 1024) and emb.dtype == torch.float32 and (emb == 0).all()
    assert load_counter == []


@pytest.mark.parametrize("path", [None, "/nonexistent/t5"])
def test_missing_t5_says_how_to_get_it(path: str | None) -> None:
    with pytest.raises(ValueError) as info:
        encode_prompts("a cat", t5_dir=path)
    assert "google-t5/t5-11b" in str(info.value) and "checkpoints.t5_dir=" in str(info.value)


def test_width_mismatch_with_the_dit(t5_dir: str) -> None:
    with pytest.raises(ValueError, match="crossattn_emb_channels"):
        encode_prompts("a cat", t5_dir=t5_dir, embed_dim=1024, max_length=SHORT)


def test_cache_hit_skips_t5(t5_dir: str, tmp_path: Path, load_counter: list[str]) -> None:
    cache_dir = str(tmp_path / "cache")
    kwargs = dict(t5_dir=t5_dir, cache_dir=cache_dir, embed_dim=D_MODEL, max_length=SHORT)
    first = encode_prompts("a cat", "the sky", **kwargs)
    assert len(load_counter) == 1
    files = sorted(os.listdir(cache_dir))
    assert len(files) == 2 and all(f.startswith("t5_") and f.endswith(".safetensors") for f in files)  # no tmp left
    second = encode_prompts("a cat", "the sky", **kwargs)
    assert len(load_counter) == 1  # every prompt hit: T5 was not constructed
    assert torch.equal(first.prompt, second.prompt) and torch.equal(first.negative, second.negative)
    encode_prompts("a cat", "a dog", **kwargs)
    assert len(load_counter) == 2 and len(os.listdir(cache_dir)) == 3  # one miss -> one load


def test_cache_key_depends_on_model_prompt_and_length(t5_dir: str, tmp_path: Path) -> None:
    cache = EmbeddingCache(str(tmp_path))
    identity = t5_identity(t5_dir)
    assert identity.startswith(os.path.realpath(t5_dir) + "#")
    paths = {cache.path(identity, "a cat", 512), cache.path(identity, "a dog", 512),
             cache.path(identity, "a cat", 256), cache.path(identity + "x", "a cat", 512)}
    assert len(paths) == 4


def test_cache_survives_corrupt_files_and_failed_writes(t5_dir: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = EmbeddingCache(str(tmp_path))
    identity = t5_identity(t5_dir)
    Path(cache.path(identity, "a cat", 8)).write_bytes(b"garbage")
    assert cache.load(identity, "a cat", 8) is None
    emb = torch.randn(1, 8, D_MODEL)
    cache.save(identity, "a cat", 8, emb)
    assert torch.equal(cache.load(identity, "a cat", 8), emb)

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(text_mod.os, "replace", fail)
    with pytest.raises(OSError):
        cache.save(identity, "a dog", 8, emb)
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(cache.path(identity, "a cat", 8))]
