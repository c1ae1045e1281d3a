"""``edm_schedule``: the Karras schedule, preconditioning and Euler step of diffusers' EDMEulerScheduler."""

from __future__ import annotations

import torch

from gen3c_dist.sampling import edm


def run_case(case) -> dict[str, torch.Tensor]:
    n = int(case.inputs["num_steps"])
    sigmas = edm.karras_sigmas(n)
    t = case.input_tensors()
    prev = torch.stack(
        [
            edm.euler_step(t["step_sample"][i], t["step_model_output"][i], sigma=sigmas[i], sigma_next=sigmas[i + 1])
            for i in range(n)
        ]
    )
    s = sigmas[:n]
    return {
        "sigmas": sigmas,
        "timesteps": edm.c_noise(s),
        "c_in": edm.c_in(s),
        "c_skip": edm.c_skip(s),
        "c_out": edm.c_out(s),
        "step_prev_sample": prev,
    }
