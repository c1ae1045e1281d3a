"""``sampler``: the whole GEN3C denoising loop for one chunk, compared step by step."""

from __future__ import annotations

import torch

from gen3c_dist.config import ModelConfig
from gen3c_dist.model.weights import load_dit
from gen3c_dist.sampling import edm
from gen3c_dist.model.inputs import DiTInputs
from gen3c_dist.sampling.guidance import combine, run_pass
from gen3c_dist.sampling.loop import FrameCondition, sample


def run_case(case) -> dict[str, torch.Tensor]:
    # sigma_data and latent_shape describe the diffusion model around the network, not the network.
    network_config = {k: v for k, v in case.config.items() if k not in ("sigma_data", "latent_shape")}
    model = load_dit(case.weights_path, ModelConfig.from_official(network_config))
    t = case.input_tensors()
    inputs = case.inputs
    n = int(inputs["num_steps"])
    sigmas = edm.karras_sigmas(n)
    cond = DiTInputs(t["crossattn_emb"], t["condition_video_input_mask"], t["condition_video_pose"], t["padding_mask"],
                     float(inputs["fps"]))
    uncond = DiTInputs(t["neg_crossattn_emb"], t["condition_video_input_mask"], torch.zeros_like(t["condition_video_pose"]),
                       t["padding_mask"], float(inputs["fps"]))
    trace: dict[str, list[torch.Tensor]] = {k: [] for k in ("x", "x_in", "net_input", "net_cond", "net_uncond", "model_output")}

    def guided(x_scaled: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        f_cond = run_pass(model, x_scaled, timestep, cond)
        f_uncond = run_pass(model, x_scaled, timestep, uncond)
        trace["net_cond"].append(f_cond)
        trace["net_uncond"].append(f_uncond)
        return combine(f_cond, f_uncond, float(inputs["guidance"]))

    def observe(step: int, record: dict[str, torch.Tensor]) -> None:
        for key, value in record.items():
            trace[key].append(value)

    condition = FrameCondition(
        gt_latent_BCTHW=t["gt_latent"],
        augment_noise_BCTHW=t["augment_noise"],
        num_frames=int(inputs["num_condition_t"]),
        augment_sigma=float(inputs["condition_augment_sigma"]),
    )
    with torch.inference_mode():
        samples = sample(
            guided, x_init=t["x_init"], sigmas=sigmas, condition=condition, sigma_data=float(case.config["sigma_data"]), observer=observe
        )
    results = {f"{k}_traj": torch.stack(v) for k, v in trace.items()}
    results.update(samples=samples, sigmas=sigmas, timesteps=edm.c_noise(sigmas[:n]))
    return results
