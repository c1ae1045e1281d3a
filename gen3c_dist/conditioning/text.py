"""T5 text embeddings for the prompt and the negative prompt, with an on-disk cache.

Official behaviour (spec sections 4.6 and 6): ``T5TokenizerFast`` + ``T5EncoderModel`` from a local
``google-t5/t5-11b`` folder, fp32, eval; each prompt is encoded alone with ``max_length=512``,
``padding="max_length"``, ``truncation=True``; rows at and after the token count are zeroed; the output is
[1, 512, d_model] (1024 for t5-11b) and the caller casts it to the DiT dtype.

* ``disable_prompt_encoder``: zeros [1, 512, d] for the prompt **and** the negative prompt, T5 is never loaded.
* An empty (or None) negative prompt reuses the positive embedding for the unconditional branch. This is the
  official behaviour (``if negative_prompt:`` in ``gen3c_pipeline.py``), kept on purpose (spec section 10, item 10).
* Cache: one safetensors file per (model identity, prompt, max_length), written atomically. When every prompt is
  cached T5 is not even constructed. The identity is the resolved model folder plus a hash of its config and
  tokenizer files and the names and sizes of its weight files, so a swapped checkpoint misses the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gen3c_dist.errors import InputError
from gen3c_dist.model.safe_load import weight_folder_problem

logger = logging.getLogger(__name__)

T5_HUB_NAME = "google-t5/t5-11b"
T5_MAX_LENGTH = 512
T5_EMBED_DIM = 1024  # d_model of t5-11b = the DiT's crossattn_emb_channels
CACHE_FORMAT_VERSION = "1"

DEFAULT_NEGATIVE_PROMPT = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, jerky movements, "
    "low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, fake elements, "
    "unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. Overall, the video is of "
    "poor quality."
)

EncoderOpener = Callable[[], ContextManager["T5PromptEncoder"]]  # lends a T5 for one block of encodes

_IDENTITY_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".index.json")


@dataclasses.dataclass
class PromptEmbeddings:
    prompt: torch.Tensor  # [1, L, D] float32
    negative: torch.Tensor  # [1, L, D] float32; the positive tensor itself when the negative prompt is empty


def resolve_t5_dir(t5_dir: Optional[str]) -> str:
    """The absolute T5 folder; one clear error if it is not there."""
    where = "no path was given" if t5_dir is None else f"{t5_dir} is not a folder with config.json"
    if t5_dir is not None and os.path.isfile(os.path.join(os.path.expanduser(t5_dir), "config.json")):
        return os.path.realpath(os.path.expanduser(t5_dir))
    raise InputError(
        f"T5 text encoder not found ({where}). Download `{T5_HUB_NAME}` from Hugging Face (e.g. `huggingface-cli "
        f"download {T5_HUB_NAME} --local-dir checkpoints/google-t5/t5-11b`) and pass "
        "`checkpoints.t5_dir=checkpoints/google-t5/t5-11b`, or set the prompt encoder off to use zero embeddings. "
        "Nothing is downloaded at run time."
    )


def t5_identity(t5_dir: str) -> str:
    """A string that changes when the model in ``t5_dir`` changes (resolved path, file hashes, weight sizes)."""
    digest = hashlib.sha256()
    for name in _IDENTITY_FILES:
        file = Path(t5_dir, name)
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    weights = sorted(p for p in Path(t5_dir).iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    for file in weights:
        digest.update(f"{file.name}:{file.stat().st_size}\0".encode())
    return f"{os.path.realpath(t5_dir)}#{digest.hexdigest()}"


def t5_folder_error(t5_dir: str, err: Exception) -> InputError:
    """One line for a T5 folder transformers could not load: the refused weight file, else transformers' reason."""
    problem = weight_folder_problem(Path(t5_dir))
    if problem is None:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        # Never pass on advice to load with weights_only=False: the folder is not trusted.
        problem = "cannot be loaded by transformers" if "weights_only" in str(err) else first[:300]
    return InputError(f"checkpoints.t5_dir {t5_dir}: {problem}; download `{T5_HUB_NAME}` again (README, "
                      "'Checkpoints')")


def _import_transformers() -> Any:
    try:
        import transformers  # optional extra [text]: only a run with T5 needs it (3 s to import)
    except ImportError as err:
        raise ImportError("the T5 text encoder needs transformers; install it with `pip install -e .[text]`") from err
    return transformers


class T5PromptEncoder:
    """The official ``CosmosT5TextEncoder``, loaded only from a local folder."""

    def __init__(self, t5_dir: str, device: Union[str, torch.device] = "cpu") -> None:
        transformers = _import_transformers()
        # transformers >= 5 loads in the checkpoint dtype by default; the official model runs in fp32 (spec 6).
        major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
        dtype_kwarg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        try:
            self.tokenizer = transformers.T5TokenizerFast.from_pretrained(t5_dir, local_files_only=True)
            model = transformers.T5EncoderModel.from_pretrained(
                t5_dir, local_files_only=True, **{dtype_kwarg: torch.float32}
            )
        except Exception as err:  # transformers' errors for a bad folder are tracebacks; say it in one line
            raise t5_folder_error(t5_dir, err) from None
        self.model = model.to(device).eval()
        self.device = torch.device(device)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.d_model)

    def encode(self, prompt: str, max_length: int = T5_MAX_LENGTH) -> torch.Tensor:
        """[1, max_length, d_model] float32, zero at and after the token count (EOS included in the count)."""
        batch = self.tokenizer(
            [prompt], return_tensors="pt", truncation=True, padding="max_length", max_length=max_length
        )
        input_ids_1l = batch.input_ids.to(self.device)
        attn_mask_1l = batch.attention_mask.to(self.device)
        with torch.inference_mode():
            hidden_1ld = self.model(input_ids=input_ids_1l, attention_mask=attn_mask_1l).last_hidden_state
        # clone() outside inference mode: callers get an ordinary tensor they may modify in place.
        hidden_1ld = hidden_1ld.float().clone()
        hidden_1ld[:, int(attn_mask_1l.sum()):] = 0
        return hidden_1ld


class EmbeddingCache:
    """Prompt embeddings on disk: ``<dir>/t5_<sha256>.safetensors``, safe for several writers at once."""

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir

    def path(self, identity: str, prompt: str, max_length: int) -> str:
        key = json.dumps([CACHE_FORMAT_VERSION, identity, prompt, max_length], ensure_ascii=True)
        return os.path.join(self.cache_dir, f"t5_{hashlib.sha256(key.encode()).hexdigest()}.safetensors")

    def load(self, identity: str, prompt: str, max_length: int) -> Optional[torch.Tensor]:
        """The cached [1, max_length, D] embedding, or None on a miss or an unusable file."""
        file = self.path(identity, prompt, max_length)
        if not os.path.isfile(file):
            return None
        try:
            with safe_open(file, framework="pt") as handle:
                meta = handle.metadata() or {}
                embedding = handle.get_tensor("embedding")
        except Exception as err:  # a truncated or foreign file is a miss, it gets rewritten
            logger.warning("ignoring unreadable text-embedding cache file %s: %s", file, err)
            return None
        expected = {"identity": identity, "prompt": prompt, "max_length": str(max_length)}
        meta_ok = all(meta.get(key) == value for key, value in expected.items())
        if not meta_ok or embedding.ndim != 3 or embedding.shape[:2] != (1, max_length):
            logger.warning("ignoring mismatched text-embedding cache file %s", file)
            return None
        return embedding

    def save(self, identity: str, prompt: str, max_length: int, embedding_1ld: torch.Tensor) -> None:
        """Write to a temporary name in the same folder, then rename: readers never see a partial file."""
        os.makedirs(self.cache_dir, exist_ok=True)
        file = self.path(identity, prompt, max_length)
        tmp = f"{file}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
        meta = {"identity": identity, "prompt": prompt, "max_length": str(max_length), "version": CACHE_FORMAT_VERSION}
        try:
            save_file({"embedding": embedding_1ld.detach().to("cpu", torch.float32).contiguous()}, tmp, metadata=meta)
            os.replace(tmp, file)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


@contextlib.contextmanager
def _fresh_encoder(t5_dir: str, device: Union[str, torch.device]) -> Iterator[T5PromptEncoder]:
    """A T5 for one call, freed afterwards (the default when the caller keeps no encoder of its own)."""
    encoder = T5PromptEncoder(t5_dir, device)
    try:
        yield encoder
    finally:
        del encoder


def _encode_with_cache(texts: list[str], t5_dir: str, cache_dir: Optional[str], max_length: int,
                       device: Union[str, torch.device],
                       open_encoder: Optional[EncoderOpener] = None) -> dict[str, torch.Tensor]:
    """Embeddings for ``texts``; T5 is constructed (or ``open_encoder`` entered) only if some text misses the cache."""
    identity = t5_identity(t5_dir)
    cache = EmbeddingCache(cache_dir) if cache_dir else None
    found: dict[str, torch.Tensor] = {}
    for text in texts:
        hit = cache.load(identity, text, max_length) if cache else None
        if hit is not None:
            found[text] = hit
    missing = [text for text in dict.fromkeys(texts) if text not in found]
    if missing:
        opener = open_encoder or (lambda: _fresh_encoder(t5_dir, device))
        with opener() as encoder:
            for text in missing:
                found[text] = encoder.encode(text, max_length)
                if cache:
                    cache.save(identity, text, max_length, found[text])
    return {text: emb.to(device=device, dtype=torch.float32) for text, emb in found.items()}


def encode_prompts(prompt: str, negative_prompt: Optional[str] = DEFAULT_NEGATIVE_PROMPT, *,
                   t5_dir: Optional[str] = None, disable_prompt_encoder: bool = False,
                   cache_dir: Optional[str] = None, max_length: int = T5_MAX_LENGTH,
                   embed_dim: int = T5_EMBED_DIM, device: Union[str, torch.device] = "cpu",
                   open_encoder: Optional[EncoderOpener] = None) -> PromptEmbeddings:
    """Prompt and negative-prompt embeddings [1, max_length, embed_dim] float32 (see the module docstring).

    ``embed_dim`` is the DiT's cross-attention width: the size of the zeros when the encoder is off, and checked
    against T5's d_model otherwise. ``open_encoder`` lends a T5 the caller keeps between calls (the runner keeps
    one per session, see ``gen3c_dist.runner.models``); without it a T5 is built for this call and freed.
    """
    if disable_prompt_encoder:
        zeros_1ld = torch.zeros(1, max_length, embed_dim, dtype=torch.float32, device=device)
        return PromptEmbeddings(prompt=zeros_1ld, negative=zeros_1ld.clone())
    folder = resolve_t5_dir(t5_dir)
    texts = [prompt, negative_prompt] if negative_prompt else [prompt]
    embeddings = _encode_with_cache(texts, folder, cache_dir, max_length, device, open_encoder)
    for emb_1ld in embeddings.values():
        if emb_1ld.shape != (1, max_length, embed_dim):
            raise InputError(
                f"T5 at {folder} gives embeddings of shape {tuple(emb_1ld.shape)}; the DiT expects "
                f"(1, {max_length}, {embed_dim}) (crossattn_emb_channels)"
            )
    positive_1ld = embeddings[prompt]
    # Official quirk: no negative prompt means the uncond branch uses the positive embedding (spec 4.6).
    negative_1ld = embeddings[negative_prompt] if negative_prompt else positive_1ld
    return PromptEmbeddings(prompt=positive_1ld, negative=negative_1ld)
