"""MoGe v1 monocular depth for the 3D cache: the input image and the frames generated between chunks.

Reproduces the official post-processing of ``gen3c_single_image.py`` (spec sections 7.1 and 1.6 step 2). The model
is the MoGe v1 ``Ruicheng/moge-vitl`` checkpoint, loaded only from a local file (never from the hub).

Generalisation to other target sizes (decision): the official code always runs MoGe on a 1280x720 image and then
resizes to the fixed 704x1280 target, so the network sees the target aspect ratio stretched vertically by 720/704.
We keep that ratio for any target: MoGe runs at ``(round(target_h * 720 / 704), target_w)``, which is exactly
720x1280 for the official target and, e.g., 65x96 for the 64x96 tiny demo. MoGe resizes its input to its own token
budget internally, so a small target only costs less, never breaks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from gen3c_dist.conditioning.input_image import import_cv2, read_rgb_image
from gen3c_dist.errors import InputError
from gen3c_dist.model.safe_load import safe_torch_load

MOGE_HUB_REPO = "Ruicheng/moge-vitl"
MOGE_LABEL = "checkpoints.moge"  # what the official script loads (spec section 1.3 item 5)
OFFICIAL_TARGET_H = 704
OFFICIAL_MOGE_H = 720  # the official depth-prediction height for the 704-row target (spec section 7.1 step 1)
MASKED_DEPTH = 1000.0  # depth written where MoGe's mask is 0 (sky / invalid), spec section 7.1 step 3
MAX_DEPTH = 1e4  # nan_to_num value and upper clamp, spec section 7.1 step 5

_MOGE_INSTALL_HINT = "pip install --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3` and `pip install -e .[depth]"


@dataclasses.dataclass
class DepthEstimate:
    """The cache inputs for one image at the target size H x W."""

    image: torch.Tensor  # [1, 3, H, W] float32 in [-1, 1]
    depth: torch.Tensor  # [1, 1, H, W] float32, in [0, MAX_DEPTH]
    mask: torch.Tensor  # [1, 1, H, W] bool, True where the depth is a real estimate
    w2c: torch.Tensor  # [1, 4, 4] float32, identity: the input camera defines the world frame
    intrinsics: torch.Tensor  # [1, 3, 3] float32, pixel units of the H x W grid


def _import_moge_v1() -> Any:
    try:
        from moge.model.v1 import MoGeModel  # installed separately (--no-deps); the error names how
    except ImportError as err:
        raise ImportError(f"MoGe depth needs the `moge` package; install it with `{_MOGE_INSTALL_HINT}`") from err
    return MoGeModel


def _missing_weights_error(path: Optional[str]) -> InputError:
    where = "no path was given" if path is None else f"{path} does not exist"
    return InputError(
        f"MoGe weights not found ({where}). GEN3C uses MoGe v1 from Hugging Face `{MOGE_HUB_REPO}`: download its "
        f"`model.pt` (e.g. `huggingface-cli download {MOGE_HUB_REPO} model.pt --local-dir checkpoints/moge-vitl`) "
        "and pass the file as `checkpoints.moge=checkpoints/moge-vitl/model.pt`. Nothing is downloaded at run time."
    )


def resolve_moge_path(path: Optional[str]) -> str:
    """The checkpoint file for ``path`` (a ``model.pt`` or a folder holding one); raises if absent."""
    if path is None:
        raise _missing_weights_error(None)
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.pt")
    if not os.path.isfile(path):
        raise _missing_weights_error(path)
    return path


def load_moge(path: Optional[str], device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """Build MoGe v1 from a local ``{'model_config': ..., 'model': ...}`` checkpoint, without pickle or network."""
    file = resolve_moge_path(path)
    model_cls = _import_moge_v1()
    way_on = f"download `{MOGE_HUB_REPO}` model.pt again (README, 'Checkpoints')"
    checkpoint = safe_torch_load(file, label=MOGE_LABEL, way_on=way_on)
    if not isinstance(checkpoint, dict) or "model_config" not in checkpoint or "model" not in checkpoint:
        raise InputError(f"{MOGE_LABEL} {file}: expected a dict with 'model_config' and 'model' (MoGe's format); "
                         f"{way_on}")
    config = dict(checkpoint["model_config"])
    if isinstance(config.get("encoder"), dict) or "points_head" in config:
        raise InputError(f"{MOGE_LABEL} {file}: this is a MoGe v2 checkpoint; GEN3C uses v1 (`{MOGE_HUB_REPO}`)")
    try:
        model = model_cls(**config)  # builds the backbone with pretrained=False: no download
        model.load_state_dict(checkpoint["model"], strict=True)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:  # a config or weights of another network
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{MOGE_LABEL} {file}: does not fit MoGe v1 ({first[:300]}); {way_on}") from None
    return model.to(device).eval()


def moge_input_size(target_h: int, target_w: int) -> tuple[int, int]:
    """(height, width) MoGe runs at for a target; (720, 1280) for the official 704x1280 (module docstring)."""
    return int(math.floor(target_h * OFFICIAL_MOGE_H / OFFICIAL_TARGET_H + 0.5)), target_w


def prepare_cache_image(rgb_hw3: np.ndarray, target_h: int, target_w: int,
                        device: Union[str, torch.device] = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The MoGe input and the cache image from an RGB uint8 [H0, W0, 3] array.

    Returns (moge_input [3, h_m, w_m] float32 in [0, 1], image [1, 3, H, W] float32 in [-1, 1]). As in the
    official code the cache image is a bilinear resize of the cv2-resized MoGe input, not of the original.
    """
    cv2 = import_cv2()
    moge_h, moge_w = moge_input_size(target_h, target_w)
    resized_hw3 = cv2.resize(rgb_hw3, (moge_w, moge_h), interpolation=cv2.INTER_LINEAR)
    # float64 division then float32, as the official `torch.tensor(x / 255.0, dtype=float32)`
    moge_input_3hw = torch.tensor(resized_hw3 / 255.0, dtype=torch.float32, device=device).permute(2, 0, 1)
    image_13hw = F.interpolate(moge_input_3hw[None], size=(target_h, target_w), mode="bilinear", align_corners=False)
    return moge_input_3hw.contiguous(), image_13hw * 2 - 1


def _run_moge(model: Any, image_3hw: torch.Tensor, num_tokens: Optional[int],
              use_fp16: Optional[bool]) -> dict[str, torch.Tensor]:
    """``model.infer`` with official defaults; fp16 autocast only on CUDA (on CPU it is ~20x slower)."""
    if use_fp16 is None:
        use_fp16 = image_3hw.device.type == "cuda"
    with warnings.catch_warnings():
        # MoGe wraps its fp32 post-processing in autocast(float32), which CPU autocast reports as unsupported.
        warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")
        return model.infer(image_3hw, num_tokens=num_tokens, use_fp16=use_fp16)


def postprocess_input_depth(depth_hw: torch.Tensor, mask_hw: torch.Tensor, intrinsics_norm_33: torch.Tensor,
                            target_h: int, target_w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official input-image post-processing (spec section 7.1 steps 3-5).

    ``depth_hw``/``mask_hw`` are MoGe's outputs at its input size (h_m, w_m); ``intrinsics_norm_33`` is normalised
    (fx, cx relative to the width; fy, cy to the height). Returns depth [1, 1, H, W], mask [1, 1, H, W] bool and
    pixel intrinsics [1, 3, 3] for the target H x W.
    """
    moge_h, moge_w = depth_hw.shape
    depth_hw = torch.where(mask_hw == 0, torch.tensor(MASKED_DEPTH, device=depth_hw.device), depth_hw)
    k_33 = intrinsics_norm_33.clone()
    k_33[0, 0] *= moge_w
    k_33[1, 1] *= moge_h
    k_33[0, 2] *= moge_w
    k_33[1, 2] *= moge_h
    scale_h, scale_w = target_h / moge_h, target_w / moge_w
    depth_11hw = F.interpolate(depth_hw[None, None], size=(target_h, target_w), mode="bilinear", align_corners=False)
    mask_11hw = F.interpolate(mask_hw[None, None].to(torch.float32), size=(target_h, target_w), mode="nearest")
    # The official code rescales the pixel intrinsics in a second step, in this order (fy, cy, fx, cx).
    k_33[1, 1] *= scale_h
    k_33[1, 2] *= scale_h
    k_33[0, 0] *= scale_w
    k_33[0, 2] *= scale_w
    depth_11hw = torch.clamp(torch.nan_to_num(depth_11hw, nan=MAX_DEPTH), min=0, max=MAX_DEPTH)
    return depth_11hw, mask_11hw.to(torch.bool), k_33[None]


def estimate_input_image_depth(model: Any, image: Union[str, os.PathLike, np.ndarray], target_h: int, target_w: int,
                               *, num_tokens: Optional[int] = None,
                               use_fp16: Optional[bool] = None) -> DepthEstimate:
    """Depth, mask and intrinsics of the input image at the target size (official ``_predict_moge_depth``).

    ``image`` is a file path (read like ``cv2.imread``, see ``input_image``) or an RGB uint8 [H0, W0, 3] array.
    ``num_tokens=None`` is the official resolution level 9 (2500 tokens for moge-vitl).
    """
    rgb_hw3 = read_rgb_image(image) if isinstance(image, (str, os.PathLike)) else image
    if rgb_hw3.dtype != np.uint8 or rgb_hw3.ndim != 3 or rgb_hw3.shape[2] != 3:
        raise ValueError(f"input image array must be RGB uint8 [H, W, 3], got {rgb_hw3.dtype} {rgb_hw3.shape}")
    device = next(model.parameters()).device
    moge_input_3hw, image_13hw = prepare_cache_image(rgb_hw3, target_h, target_w, device)
    out = _run_moge(model, moge_input_3hw, num_tokens, use_fp16)
    depth_11hw, mask_11hw, k_133 = postprocess_input_depth(
        out["depth"], out["mask"], out["intrinsics"], target_h, target_w
    )
    w2c_144 = torch.eye(4, dtype=torch.float32, device=device)[None]
    return DepthEstimate(image=image_13hw, depth=depth_11hw, mask=mask_11hw, w2c=w2c_144, intrinsics=k_133)


def postprocess_frame_depth(depth_hw: torch.Tensor, mask_hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Official generated-frame post-processing (spec section 1.6 step 2), in the official order.

    nan -> 1e4 (+inf becomes the float max), clamp to [0, 1e4], and only then masked pixels -> 1000.
    Returns depth [1, 1, H, W] and mask [1, 1, H, W] bool.
    """
    depth_11hw = torch.clamp(torch.nan_to_num(depth_hw[None, None], nan=MAX_DEPTH), min=0, max=MAX_DEPTH)
    mask_11hw = mask_hw[None, None]
    depth_11hw = torch.where(mask_11hw == 0, torch.tensor(MASKED_DEPTH, device=depth_11hw.device), depth_11hw)
    return depth_11hw, mask_11hw


def estimate_frame_depth(model: Any, frame_3hw: torch.Tensor, *, num_tokens: Optional[int] = None,
                         use_fp16: Optional[bool] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth of a generated frame [3, H, W] in [0, 1] at its own size (official ``_predict_moge_depth_from_tensor``).

    MoGe's intrinsics are discarded on purpose: the cache update uses the trajectory's intrinsics (spec 1.6).
    Returns depth [1, 1, H, W] and mask [1, 1, H, W] bool.
    """
    if frame_3hw.ndim != 3 or frame_3hw.shape[0] != 3:
        raise ValueError(f"generated frame must be [3, H, W] in [0, 1], got shape {tuple(frame_3hw.shape)}")
    device = next(model.parameters()).device
    out = _run_moge(model, frame_3hw.to(device=device, dtype=torch.float32), num_tokens, use_fp16)
    return postprocess_frame_depth(out["depth"], out["mask"])
