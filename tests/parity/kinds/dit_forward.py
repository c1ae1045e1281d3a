"""``dit_forward``: one official ``VideoExtendGeneralDIT.forward`` call, with its debug intermediates.

Weights go through :func:`gen3c_dist.model.weights.load_dit`, the loader users run on ``model.pt``.
"""

from __future__ import annotations

import torch

from gen3c_dist.config import ModelConfig
from gen3c_dist.model.attention import local_attention
from gen3c_dist.model.weights import load_dit


def run_case(case) -> dict[str, torch.Tensor]:
    cfg = ModelConfig.from_official(case.config)
    model = load_dit(case.weights_path, cfg)
    t = case.input_tensors()
    with torch.inference_mode():
        x_BLD, ctx = model.embed(
            t["x"],
            t["timesteps"],
            t["crossattn_emb"],
            condition_video_input_mask_B1THW=t["condition_video_input_mask"],
            condition_video_pose_BCTHW=t["condition_video_pose"],
            padding_mask_B1HW=t["padding_mask"],
            fps=float(case.inputs["fps"]),
        )
        B, (T, H, W), D = x_BLD.shape[0], ctx.positions.grid_THW, x_BLD.shape[-1]
        grid = lambda x: x.reshape(B, T, H, W, D)  # noqa: E731  [B, L, D] -> [B, T, H, W, D]
        # The blocks hold cos/sin of these angles (TokenPositions); the fixture records the angles themselves.
        rope_LD = model.rope_angles(ctx.positions.grid_THW, fps=float(case.inputs["fps"]))
        results = {
            "debug.patch_embed": grid(x_BLD),
            "debug.rope_freqs": rope_LD[:, None, None, :],
            "debug.extra_pos_emb": grid(ctx.positions.pos_emb_LD.expand(B, -1, -1)),
            "debug.t_emb_sinusoid": model.t_embedder(t["timesteps"])[0],
            "debug.adaln_lora": ctx.adaln_lora_B3D,
            "debug.affline_emb": ctx.affline_BD,
        }
        for i, block in enumerate(model.blocks.values()):
            x_BLD = block(x_BLD, ctx, local_attention)
            results[f"debug.block{i}"] = grid(x_BLD)
        final_BLP = model.final_layer(x_BLD, ctx.affline_BD, ctx.adaln_lora_B3D)
        results["debug.final_layer"] = final_BLP.reshape(B * T, H * W, -1)
        results["output"] = model.unpatchify(final_BLP, ctx.positions.grid_THW)
    return results
