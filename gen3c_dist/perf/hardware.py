"""GPU datasheet table (for MFU and the projection) and a description of the machine a sweep runs on.

Datasheet figures, dense BF16 tensor-core peak (NVIDIA quotes "with sparsity" figures at twice these):

* H100 SXM5 80GB: 989 TFLOP/s (1,979 with sparsity), HBM3 3.35 TB/s, NVLink 4 900 GB/s, 8 GPUs per HGX node
  on NVSwitch. Source: NVIDIA H100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h100/
* H100 PCIe 80GB: 756 TFLOP/s (1,513 with sparsity), HBM2e 2.0 TB/s, NVLink bridge 600 GB/s between the two
  cards of a pair only; other GPUs of the node talk over PCIe Gen5 x16, 128 GB/s bidirectional = ~64 GB/s each
  way. Source: the same datasheet (H100 PCIe column) and the PCIe 5.0 x16 rate (32 GT/s x 16 lanes).
  ASSUMPTION: 8 PCIe cards per node as 4 bridged pairs; ranks 2k and 2k+1 share a bridge.
* A100 SXM4 80GB: 312 TFLOP/s (624 with sparsity), HBM2e 2.039 TB/s, NVLink 3 600 GB/s, 8 per node on
  NVSwitch. Source: NVIDIA A100 datasheet, https://www.nvidia.com/en-us/data-center/a100/
* H200 SXM 141GB: 989 TFLOP/s (1,979 with sparsity), HBM3e 4.8 TB/s, NVLink 900 GB/s, 8 per node.
  Source: NVIDIA H200 datasheet, https://www.nvidia.com/en-us/data-center/h200/
* Between nodes: InfiniBand NDR 400 Gb/s, one ConnectX-7 per GPU (DGX H100 / HGX reference design) = 50 GB/s
  per GPU each way. Source: NVIDIA DGX H100 user guide (8x ConnectX-7 400 Gb/s compute fabric ports).

NVLink numbers on datasheets are bidirectional totals; a rank *sending* its share uses one direction, so the
model divides them by two (450 GB/s per direction on H100/H200 SXM, 300 on A100 and the H100 PCIe bridge).

Assumed efficiencies (fractions of the peaks above; none is fitted to a measured clip time):

* GEMM 0.70 on Hopper, 0.80 on A100. ASSUMPTION: cuBLAS sustains about 650-750 TFLOP/s on large bf16 GEMMs
  on an H100 SXM, which runs below its boost clock under full tensor load; the A100 reaches a larger share
  of its lower peak (~250 of 312 TFLOP/s). GEN3C's GEMMs are large (56,320 x 4096 x 4096 and up).
* Attention "fa2" 0.35 on Hopper: "FlashAttention-2 achieving only 35% utilization on the H100 GPU" (Shah et
  al., FlashAttention-3, arXiv:2407.08608, abstract). Cosmos-1.0 (TransformerEngine 1.x era) used this class
  of kernel. "fa3" 0.75 on Hopper: FlashAttention-3 "reaching up to 740 TFLOPs/s (75% utilization)" (same
  abstract). A100 0.60 for both: FlashAttention-2 reaches "50-73% of the theoretical maximum FLOPs/s on A100"
  (Dao, arXiv:2307.08691, abstract); FA3 is Hopper-only.
* HBM 0.80 and links 0.80 of the datasheet bandwidth. ASSUMPTION: STREAM-like kernels and NCCL all-to-all /
  send-recv of multi-MB messages typically reach 80-90% of nominal bandwidth.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import socket
import subprocess
from typing import Optional

ATTENTION_KERNELS = ("fa2", "fa3")


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    key: str
    name: str
    bf16_tflops: float  # dense peak
    hbm_tb_s: float
    nvlink_gb_s: float  # datasheet (bidirectional) total per GPU
    nvlink_domain: int  # consecutive ranks that share NVLink (8 = NVSwitch node, 2 = bridged pair)
    pcie_gb_s: float  # per direction, between GPUs of a node outside the NVLink domain
    ib_gb_s: float  # per GPU per direction, between nodes
    gemm_efficiency: float
    attention_efficiency: dict  # kernel class -> fraction of peak

    @property
    def peak_flops(self) -> float:
        return self.bf16_tflops * 1e12

    def attention_eff(self, kernel: str) -> float:
        if kernel not in self.attention_efficiency:
            raise ValueError(f"attention kernel {kernel!r} is unknown; choose one of {list(ATTENTION_KERNELS)}")
        return self.attention_efficiency[kernel]


HBM_EFFICIENCY = 0.80
LINK_EFFICIENCY = 0.80
IB_NDR_GB_S = 50.0  # 400 Gb/s
PCIE5_X16_GB_S = 64.0  # per direction
PCIE4_X16_GB_S = 32.0  # A100 generation

GPUS: dict[str, GpuSpec] = {
    spec.key: spec
    for spec in (
        GpuSpec("h100_sxm", "H100 SXM", 989.0, 3.35, 900.0, 8, PCIE5_X16_GB_S, IB_NDR_GB_S, 0.70, {"fa2": 0.35, "fa3": 0.75}),
        GpuSpec("h100_pcie", "H100 PCIe", 756.0, 2.0, 600.0, 2, PCIE5_X16_GB_S, IB_NDR_GB_S, 0.70, {"fa2": 0.35, "fa3": 0.75}),
        GpuSpec("a100_sxm", "A100 SXM", 312.0, 2.039, 600.0, 8, PCIE4_X16_GB_S, IB_NDR_GB_S, 0.80, {"fa2": 0.60, "fa3": 0.60}),
        GpuSpec("h200", "H200 SXM", 989.0, 4.8, 900.0, 8, PCIE5_X16_GB_S, IB_NDR_GB_S, 0.70, {"fa2": 0.35, "fa3": 0.75}),
    )
}


def gpu_spec(key: str) -> GpuSpec:
    if key not in GPUS:
        raise ValueError(f"unknown GPU {key!r}; choose from {sorted(GPUS)}")
    return GPUS[key]


def gpu_spec_for_name(device_name: Optional[str]) -> Optional[GpuSpec]:
    """The table entry for a CUDA device name (``torch.cuda.get_device_name``), or None when it has none.

    "NVIDIA H100 80GB HBM3" is the SXM part; "H100 NVL" has other peaks and is not in the table. Any A100 maps
    to the A100 entry: the PCIe card has the same 312 TFLOP/s compute peak, which is all MFU needs.
    """
    if not device_name:
        return None
    name = device_name.upper()
    if "H200" in name:
        return GPUS["h200"]
    if "H100" in name:
        if "NVL" in name:
            return None
        return GPUS["h100_pcie"] if "PCIE" in name else GPUS["h100_sxm"]
    if "A100" in name:
        return GPUS["a100_sxm"]
    return None


# ---- the machine a sweep runs on ---------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _nvidia_smi_names() -> list[str]:
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in found.stdout.splitlines() if line.strip()] if found.returncode == 0 else []


def cuda_device_name() -> Optional[str]:
    """GPU 0's name from nvidia-smi: the sweep process must not open a CUDA context of its own on the GPU
    its runs measure (it would hold memory there for the whole sweep)."""
    names = _nvidia_smi_names()
    return names[0] if names else None


def host_info() -> dict:
    """CPU model, cores, memory and GPU of this machine, for the result files."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = cuda_device_name()
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_bytes": _memory_bytes(),
        "gpu_name": gpu,
    }
    if gpu is not None:
        info["gpu_count"] = len(_nvidia_smi_names())
    return info


def hardware_slug(info: Optional[dict] = None) -> str:
    """A folder name for results: ``h100-80gb-hbm3-x8`` or ``cpu-amd-epyc-2c``."""
    info = info or host_info()
    if info.get("gpu_name"):
        base, count = info["gpu_name"].replace("NVIDIA", ""), f"x{info.get('gpu_count', 1)}"
    else:
        base, count = f"cpu {info['cpu_model']}", f"{info['cpu_cores_usable']}c"
    slug = re.sub(r"[^a-z0-9]+", "-", f"{base} {count}".lower()).strip("-")
    return slug or "unknown"
