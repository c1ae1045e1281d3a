"""Reading the released tokenizer files into the native modules, with strict key accounting.

Files of ``Cosmos-Tokenize1-CV8x8x8-720p`` (spec section 5.1):
* ``encoder.jit`` / ``decoder.jit``: TorchScript; only their ``state_dict()`` is read here (no pickle);
* ``mean_std.pt``: a pair (mean, std) of per-(channel, latent frame) statistics, read with ``weights_only=True``.

Accounting: every key of a file must be consumed by the module or be one of the Haar buffers that the module
rebuilds from its config (their values are checked, not copied); every parameter of the module must be filled.
Anything else is one ``TokenizerLoadError`` naming the source and all offending keys.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from gen3c_dist.model.safe_load import OFFICIAL_DOWNLOAD, CheckpointError, describe_unreadable, safe_torch_load

ENCODER_FILE = "encoder.jit"
DECODER_FILE = "decoder.jit"
MEAN_STD_FILE = "mean_std.pt"
ENCODER_PREFIXES = ("encoder.", "quant_conv.")
DECODER_PREFIXES = ("post_quant_conv.", "decoder.")
# Persistent buffers of the official (un)patcher: rebuilt from the config, checked against the file if present.
REBUILT_BUFFERS = (
    "encoder.patcher3d.wavelets",
    "encoder.patcher3d._arange",
    "encoder.patcher3d.patch_size_buffer",
    "decoder.unpatcher3d.wavelets",
    "decoder.unpatcher3d._arange",
)


class TokenizerLoadError(CheckpointError):
    """A tokenizer file is missing, unreadable, or does not fit the configured network."""


def require_files(folder: str | Path, names: tuple[str, ...]) -> dict[str, Path]:
    """Paths of ``names`` inside ``folder``; one error listing every missing one."""
    folder = Path(folder)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise TokenizerLoadError(f"tokenizer folder {folder} lacks {', '.join(missing)} "
                                 f"(expected the Cosmos-Tokenize1-CV8x8x8-720p files: {', '.join(names)})")
    return {name: folder / name for name in names}


LABEL = "checkpoints.tokenizer_dir file"


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on the CPU. The released files are TorchScript, so its deprecation notice is muted.

    TorchScript archives carry their own restricted format (tensors, TorchScript types and code), not Python
    pickles; nothing of the file runs here but the read of its weights."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError/ValueError variants depending on the damage
        problem = describe_unreadable(Path(path), err, torchscript=True)
        raise TokenizerLoadError(f"{LABEL} {path}: {problem}; {OFFICIAL_DOWNLOAD}") from None


def read_jit_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript file, on the CPU (the file's forward is never run)."""
    return {k: v.detach() for k, v in load_torchscript(path).state_dict().items()}


def split_tokenizer_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """A full ``CausalContinuousVideoTokenizer`` state dict -> (encoder.jit keys, decoder.jit keys)."""
    enc = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
    dec = {k: v for k, v in state.items() if k.startswith(DECODER_PREFIXES)}
    other = sorted(set(state) - set(enc) - set(dec))
    if other:
        raise TokenizerLoadError(f"tokenizer state dict has keys outside encoder/decoder: {other}")
    return enc, dec


def _check_rebuilt(name: str, mine: torch.Tensor, theirs: torch.Tensor) -> str | None:
    if mine.shape != theirs.shape or not torch.allclose(mine.double(), theirs.double().cpu(), rtol=0, atol=1e-6):
        return f"{name} = {theirs.tolist()} (this network rebuilds {mine.tolist()})"
    return None


def load_module_state(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``module`` with strict accounting; ``source`` names the file in errors."""
    own = module.state_dict()
    rebuilt = {k for k in own if k in REBUILT_BUFFERS}
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and k not in rebuilt)
    problems = [f"unexpected keys {unexpected}"] if unexpected else []
    if missing:
        problems.append(f"missing keys {missing}")
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and k not in rebuilt and state[k].shape != own[k].shape]
    if wrong:
        problems.append(f"shape mismatches (file vs network) {wrong}")
    bad_buffers = [msg for k in sorted(rebuilt & set(state)) if (msg := _check_rebuilt(k, own[k], state[k]))]
    if bad_buffers:
        problems.append(f"Haar buffers that disagree with the config {bad_buffers}")
    if problems:
        raise TokenizerLoadError(f"{source} does not fit the tokenizer network: " + "; ".join(problems))
    with torch.no_grad():
        for name, tensor in own.items():
            if name not in rebuilt:
                tensor.copy_(state[name])


def latent_stats_from_pair(mean: torch.Tensor, std: torch.Tensor, latent_ch: int, latent_frames: int,
                           source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as stored -> each (1, C, Lt, 1, 1): channel-major ``view(C, -1)[:, :Lt]`` (spec section 5.1)."""
    out = []
    for name, stats in (("mean", mean), ("std", std)):
        if not isinstance(stats, torch.Tensor) or stats.numel() % latent_ch:
            raise TokenizerLoadError(f"{source}: {name} must be a tensor with a multiple of {latent_ch} values")
        per_channel = stats.detach().float().reshape(latent_ch, -1)
        if per_channel.shape[1] < latent_frames:
            raise TokenizerLoadError(f"{source}: {name} has statistics for {per_channel.shape[1]} latent frames, "
                                     f"the chunk needs {latent_frames}")
        out.append(per_channel[:, :latent_frames].reshape(1, latent_ch, latent_frames, 1, 1).clone())
    if not bool((out[1] > 0).all()):
        raise TokenizerLoadError(f"{source}: std has non-positive entries")
    return out[0], out[1]


def load_mean_std(path: str | Path, latent_ch: int, latent_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean_std.pt`` -> (mean, std), each (1, latent_ch, latent_frames, 1, 1) float32."""
    pair = safe_torch_load(path, label=LABEL)
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TokenizerLoadError(f"{path} must hold a pair (mean, std), found {type(pair).__name__}")
    return latent_stats_from_pair(pair[0], pair[1], latent_ch, latent_frames, str(path))
