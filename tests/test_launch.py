"""launch/ scripts: the exact srun/torchrun command each one builds, env overrides, "$@" pass-through, errors.

Each script runs under plain bash (not sbatch) in a minimal environment, with stand-ins for srun, scontrol,
torchrun and nvidia-smi first on PATH. The stand-ins use shell builtins only, record their argv NUL-separated
(any argument survives, spaces and newlines included), and exit 0; srun execs the command after its options,
as the real one does on each node, so torchrun records too.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
BASH = shutil.which("bash")
SCRIPTS = ("torchrun_local.sh", "slurm_single_node.sbatch", "slurm_multi_node.sbatch", "slurm_array_batch.sbatch")

# Variables the torchrun stand-in reports, to check what the scripts export to the ranks.
REPORTED_ENV = ("OMP_NUM_THREADS", "NCCL_DEBUG", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "PYTHONUNBUFFERED", "NCCL_SOCKET_IFNAME")

RECORD = r"""
printf '%s\0' "$@" > "$STUB_RECORD/{name}.argv.$$"
"""

STUBS = {
    "torchrun": RECORD
    + r"""
for n in {reported_env}; do
    if [[ -n "${{!n+set}}" ]]; then printf '%s=%s\0' "$n" "${{!n}}"; fi
done > "$STUB_RECORD/torchrun.env.$$"
exit "${{STUB_TORCHRUN_RC:-0}}"
""",
    "srun": RECORD
    + r"""
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
exec "$@"
""",
    "scontrol": RECORD
    + r"""
if [[ "$1 $2" == "show hostnames" ]]; then
    printf '%s' "${{STUB_HOSTNAMES-gpu-node-001
gpu-node-002
}}"
fi
exit "${{STUB_SCONTROL_RC:-0}}"
""",
    "nvidia-smi": RECORD
    + r"""
for ((i = 0; i < ${{STUB_GPUS:-0}}; i++)); do
    printf 'GPU %d: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-00000000000%d)\n' "$i" "$i"
done
exit "${{STUB_NVSMI_RC:-0}}"
""",
}

RUNNER = ["-m", "gen3c_dist.run"]
USER_ARGS = ["input.image=x.png", "trajectory.type=zoom_in", "parallel.ulysses=4", "parallel.cfg=2"]
# Must reach the runner byte for byte: a space, a comma, quotes, a $( ) that no shell may expand.
AWKWARD_ARGS = ["input.prompt=a red car, at night", "output.dir='out dir'", "hydra.run.dir=runs/$(date)"]

SLURM_SINGLE = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "gen3c",
    "SLURM_NNODES": "1",
    "SLURM_JOB_NODELIST": "gpu-node-001",
    "SLURM_CPUS_PER_TASK": "64",
    "SLURM_GPUS_PER_NODE": "8",
}
SLURM_MULTI = {
    "SLURM_JOB_ID": "777",
    "SLURM_JOB_NAME": "gen3c-multi",
    "SLURM_NNODES": "2",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_JOB_NODELIST": "gpu-node-[001-002]",
    "SLURM_CPUS_PER_TASK": "64",
    "SLURM_GPUS_PER_NODE": "8",
}
# Array task 2 of --array=0-3: its own job id 5003, the array's 5000.
SLURM_ARRAY = {
    "SLURM_JOB_ID": "5003",
    "SLURM_JOB_NAME": "gen3c-batch",
    "SLURM_ARRAY_JOB_ID": "5000",
    "SLURM_ARRAY_TASK_ID": "2",
    "SLURM_ARRAY_TASK_COUNT": "4",
    "SLURM_ARRAY_TASK_MIN": "0",
    "SLURM_ARRAY_TASK_MAX": "3",
    "SLURM_ARRAY_TASK_STEP": "1",
    "SLURM_NNODES": "1",
    "SLURM_JOB_NODELIST": "gpu-node-003",
    "SLURM_CPUS_PER_TASK": "64",
}


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    calls: dict[str, list[list[str]]]
    env: dict[str, str]

    def only(self, name: str) -> list[str]:
        assert len(self.calls.get(name, [])) == 1, f"{name} ran {len(self.calls.get(name, []))} times\n{self.stderr}"
        return self.calls[name][0]

    def printed(self) -> list[str]:
        """The `+ ...` line the script prints before exec, split as a shell would."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("+ ")]
        assert len(lines) == 1, self.stderr
        return shlex.split(lines[0][2:])


@pytest.fixture
def sandbox(tmp_path: Path):
    """Returns run(script, *args, env={...}, nvidia_smi=True) with the stand-ins first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text(f"#!{BASH}\n" + body.format(name=name, reported_env=" ".join(REPORTED_ENV)))
        stub.chmod(0o755)
    record = tmp_path / "record"
    work = tmp_path / "work"
    work.mkdir()

    def run(script: str, *args: str, env: dict[str, str] | None = None, nvidia_smi: bool = True) -> Run:
        if record.exists():
            shutil.rmtree(record)
        record.mkdir()
        (bin_dir / "nvidia-smi.off").unlink(missing_ok=True)
        if not nvidia_smi:
            (bin_dir / "nvidia-smi").rename(bin_dir / "nvidia-smi.off")
        # Built from scratch so that NGPU, SLURM_*, CUDA_VISIBLE_DEVICES, ... of the shell running pytest do not
        # leak in. Without nvidia-smi PATH is the stand-ins only, so a real nvidia-smi cannot answer either.
        full_env = {"PATH": str(bin_dir) if not nvidia_smi else f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
                    "STUB_RECORD": str(record), **(env or {})}
        proc = subprocess.run([BASH, str(LAUNCH / script), *args], env=full_env, cwd=work, capture_output=True,
                              text=True, timeout=20)
        if not nvidia_smi:
            (bin_dir / "nvidia-smi.off").rename(bin_dir / "nvidia-smi")
        calls: dict[str, list[list[str]]] = {}
        for path in sorted(record.glob("*.argv.*")):
            data = path.read_bytes().decode()
            calls.setdefault(path.name.split(".argv.")[0], []).append(data.split("\0")[:-1] if data else [])
        envs = list(record.glob("torchrun.env.*"))
        reported = dict(item.split("=", 1) for item in envs[0].read_text().split("\0")[:-1]) if envs else {}
        return Run(proc.returncode, proc.stdout, proc.stderr, calls, reported)

    run.work = work
    return run


def local_argv(ngpu: int | str = "gpu", port: int = 29500, config: str = "gen3c_7b", log_ranks: str = "0",
               log_dir: str = "logs/torchrun") -> list[str]:
    return [
        "--nnodes=1", f"--nproc_per_node={ngpu}", "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}",
        "--log-dir", log_dir, "--local-ranks-filter", log_ranks, "--tee", "3", *RUNNER, "--config-name", config,
    ]


def slurm_torchrun_argv(*, nnodes: int, gpus: int, job_id: str, endpoint: str, log_dir: str = "logs/torchrun",
                        log_ranks: str = "0", config: str = "gen3c_7b") -> list[str]:
    return [
        f"--nnodes={nnodes}", f"--nproc_per_node={gpus}", f"--rdzv-id={job_id}", "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}", "--log-dir", log_dir, "--local-ranks-filter", log_ranks, "--tee", "3",
        *RUNNER, "--config-name", config,
    ]


# --- all scripts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    proc = subprocess.run([BASH, "-n", str(LAUNCH / script)], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_strict_mode_and_sbatch_header(script):
    text = (LAUNCH / script).read_text()
    assert "set -euo pipefail" in text
    if script.endswith(".sbatch"):
        # sbatch stops reading #SBATCH lines at the first command, so the header must come before any.
        header_end = text.index("set -euo pipefail")
        assert "#SBATCH --output=logs/" in text[:header_end]
        assert "#SBATCH --gpus-per-node=8" in text[:header_end]


# --- torchrun_local.sh ---------------------------------------------------------------------------------------


def test_local_default_command(sandbox):
    """With a GPU, torchrun counts the GPUs itself (--nproc_per_node=gpu); nvidia-smi only says there is one."""
    r = sandbox("torchrun_local.sh", *USER_ARGS, env={"STUB_GPUS": "4"})
    assert r.rc == 0, r.stderr
    assert r.only("torchrun") == local_argv(ngpu="gpu") + USER_ARGS
    assert r.printed() == ["torchrun", *local_argv(ngpu="gpu"), *USER_ARGS]
    assert r.only("nvidia-smi") == ["-L"]
    assert "srun" not in r.calls


def test_local_env_overrides(sandbox):
    env = {"STUB_GPUS": "8", "NGPU": "2", "MASTER_PORT": "29611", "CONFIG_NAME": "demo", "LOG_RANKS": "0,1",
           "LOG_DIR": "/tmp/rank logs", "TORCHRUN": "torchrun --max-restarts=0"}
    r = sandbox("torchrun_local.sh", *USER_ARGS, env=env)
    assert r.rc == 0, r.stderr
    expected = ["--max-restarts=0", *local_argv(ngpu=2, port=29611, config="demo", log_ranks="0,1", log_dir="/tmp/rank logs"), *USER_ARGS]
    assert r.only("torchrun") == expected
    assert r.printed() == ["torchrun", *expected]
    assert "nvidia-smi" not in r.calls  # NGPU given: no probing


@pytest.mark.parametrize(
    "env, nvidia_smi, ngpu",
    [
        ({}, False, 1),  # no nvidia-smi on PATH (CPU machine)
        ({"STUB_GPUS": "8", "STUB_NVSMI_RC": "9"}, True, 1),  # nvidia-smi present but failing (no driver)
        ({"STUB_GPUS": "0"}, True, 1),
        ({"STUB_GPUS": "8", "CUDA_VISIBLE_DEVICES": "0,3"}, True, "gpu"),  # torchrun's count honours the mask
        ({"CUDA_VISIBLE_DEVICES": "0,3"}, False, 1),  # a mask without a driver is still no GPU
        ({"STUB_GPUS": "8", "CUDA_VISIBLE_DEVICES": ""}, True, 1),  # masked to nothing: torchrun's gpu would fail
        ({"STUB_GPUS": "8", "CUDA_VISIBLE_DEVICES": ","}, True, 1),
    ],
)
def test_local_gpu_count(sandbox, env, nvidia_smi, ngpu):
    r = sandbox("torchrun_local.sh", env=env, nvidia_smi=nvidia_smi)
    assert r.rc == 0, r.stderr
    assert r.only("torchrun") == local_argv(ngpu=ngpu)


def test_local_passes_awkward_args_verbatim_and_prints_them_quoted(sandbox):
    r = sandbox("torchrun_local.sh", *AWKWARD_ARGS, env={"NGPU": "1"})
    assert r.rc == 0, r.stderr
    assert r.only("torchrun") == local_argv(ngpu=1) + AWKWARD_ARGS
    assert r.printed() == ["torchrun", *local_argv(ngpu=1), *AWKWARD_ARGS]


def test_local_exit_status_is_torchruns(sandbox):
    r = sandbox("torchrun_local.sh", env={"NGPU": "1", "STUB_TORCHRUN_RC": "7"})
    assert r.rc == 7


# --- slurm_single_node.sbatch --------------------------------------------------------------------------------


def test_single_node_default_command(sandbox):
    r = sandbox("slurm_single_node.sbatch", *USER_ARGS, env=SLURM_SINGLE)
    assert r.rc == 0, r.stderr
    torchrun = slurm_torchrun_argv(nnodes=1, gpus=8, job_id="4242", endpoint="localhost:24242") + USER_ARGS
    assert r.only("torchrun") == torchrun
    srun = ["--nodes=1", "--ntasks=1", "--cpus-per-task=64", "torchrun", *torchrun]
    assert r.only("srun") == srun
    assert r.printed() == ["srun", *srun]
    assert r.env["OMP_NUM_THREADS"] == "8"


def test_single_node_env_overrides(sandbox):
    env = {**SLURM_SINGLE, "GPUS_PER_NODE": "4", "MASTER_PORT": "31000", "CONFIG_NAME": "demo", "LOG_RANKS": "0-3",
           "LOG_DIR": "/scratch/rank-logs", "OMP_NUM_THREADS": "2"}
    del env["SLURM_CPUS_PER_TASK"]  # no --cpus-per-task on sbatch: srun gets none either
    r = sandbox("slurm_single_node.sbatch", *AWKWARD_ARGS, env=env)
    assert r.rc == 0, r.stderr
    torchrun = slurm_torchrun_argv(nnodes=1, gpus=4, job_id="4242", endpoint="localhost:31000",
                                   log_dir="/scratch/rank-logs", log_ranks="0-3", config="demo") + AWKWARD_ARGS
    assert r.only("srun") == ["--nodes=1", "--ntasks=1", "torchrun", *torchrun]
    assert r.only("torchrun") == torchrun
    assert r.env["OMP_NUM_THREADS"] == "2"


def test_single_node_refuses_to_run_outside_slurm(sandbox):
    r = sandbox("slurm_single_node.sbatch", env={})
    assert r.rc != 0
    assert "sbatch" in r.stderr
    assert not r.calls


# --- slurm_multi_node.sbatch ---------------------------------------------------------------------------------


def test_multi_node_default_command(sandbox):
    r = sandbox("slurm_multi_node.sbatch", *USER_ARGS, env=SLURM_MULTI)
    assert r.rc == 0, r.stderr
    assert r.only("scontrol") == ["show", "hostnames", "gpu-node-[001-002]"]
    torchrun = slurm_torchrun_argv(nnodes=2, gpus=8, job_id="777", endpoint="gpu-node-001:20777") + USER_ARGS
    srun = ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=64",
            "torchrun", *torchrun]
    assert r.only("srun") == srun
    assert r.only("torchrun") == torchrun
    assert r.printed() == ["srun", *srun]
    assert r.env == {"OMP_NUM_THREADS": "8", "NCCL_DEBUG": "WARN", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
                     "PYTHONUNBUFFERED": "1"}


def test_multi_node_env_overrides(sandbox):
    env = {**SLURM_MULTI, "SLURM_NNODES": "4", "SLURM_JOB_NODELIST": "gpu-node-[001-004]", "HEAD_NODE": "10.1.2.3",
           "MASTER_PORT": "29400", "GPUS_PER_NODE": "4", "CONFIG_NAME": "demo", "OMP_NUM_THREADS": "16",
           "NCCL_DEBUG": "INFO", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "NCCL_SOCKET_IFNAME": "ib0"}
    r = sandbox("slurm_multi_node.sbatch", *AWKWARD_ARGS, env=env)
    assert r.rc == 0, r.stderr
    assert "scontrol" not in r.calls  # HEAD_NODE given
    torchrun = slurm_torchrun_argv(nnodes=4, gpus=4, job_id="777", endpoint="10.1.2.3:29400",
                                   config="demo") + AWKWARD_ARGS
    assert r.only("torchrun") == torchrun
    assert r.only("srun")[:3] == ["--nodes=4", "--ntasks=4", "--ntasks-per-node=1"]
    assert r.env == {"OMP_NUM_THREADS": "16", "NCCL_DEBUG": "INFO", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
                     "PYTHONUNBUFFERED": "1", "NCCL_SOCKET_IFNAME": "ib0"}


def test_multi_node_without_head_node_fails_clearly(sandbox):
    r = sandbox("slurm_multi_node.sbatch", env={**SLURM_MULTI, "STUB_HOSTNAMES": ""})
    assert r.rc == 2
    assert "no head node" in r.stderr
    assert "torchrun" not in r.calls


def test_multi_node_stops_when_scontrol_fails(sandbox):
    r = sandbox("slurm_multi_node.sbatch", env={**SLURM_MULTI, "STUB_SCONTROL_RC": "1"})
    assert r.rc != 0
    assert "srun" not in r.calls


def test_multi_node_exit_status_is_sruns(sandbox):
    r = sandbox("slurm_multi_node.sbatch", env={**SLURM_MULTI, "STUB_TORCHRUN_RC": "5"})
    assert r.rc == 5


# --- slurm_array_batch.sbatch --------------------------------------------------------------------------------


@pytest.fixture
def jsonl(sandbox) -> str:
    (sandbox.work / "inputs.jsonl").write_text('{"input": {"image": "a.png"}}\n{"input": {"image": "b.png"}}\n')
    return "inputs.jsonl"  # relative: tasks start in the submit directory


def array_torchrun_argv(jsonl_value: str, shard: int, shards: int, **kw) -> list[str]:
    base = slurm_torchrun_argv(nnodes=1, gpus=kw.pop("gpus", 8), job_id="5003",
                               endpoint=kw.pop("endpoint", "localhost:25003"), **kw)
    return base + [f"batch.jsonl={jsonl_value}", f"batch.shard_index={shard}", f"batch.num_shards={shards}"]


def test_array_default_command(sandbox, jsonl):
    r = sandbox("slurm_array_batch.sbatch", *USER_ARGS, env={**SLURM_ARRAY, "BATCH_JSONL": jsonl})
    assert r.rc == 0, r.stderr
    torchrun = array_torchrun_argv(jsonl, 2, 4) + USER_ARGS
    srun = ["--nodes=1", "--ntasks=1", "--cpus-per-task=64", "torchrun", *torchrun]
    assert r.only("srun") == srun
    assert r.only("torchrun") == torchrun
    assert r.printed() == ["srun", *srun]
    assert r.env["OMP_NUM_THREADS"] == "8"


def test_array_count_falls_back_to_min_max(sandbox, jsonl):
    env = {**SLURM_ARRAY, "SLURM_ARRAY_TASK_MAX": "5", "BATCH_JSONL": jsonl}
    del env["SLURM_ARRAY_TASK_COUNT"]
    r = sandbox("slurm_array_batch.sbatch", env=env)
    assert r.rc == 0, r.stderr
    assert r.only("torchrun") == array_torchrun_argv(jsonl, 2, 6)


def test_array_env_overrides_and_rerun_of_some_shards(sandbox, jsonl):
    # `NUM_SHARDS=8 sbatch --array=5`: task 5 alone, still shard 5 of 8.
    env = {**SLURM_ARRAY, "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_MAX": "5",
           "SLURM_ARRAY_TASK_COUNT": "1", "NUM_SHARDS": "8", "BATCH_JSONL": jsonl, "GPUS_PER_NODE": "2",
           "MASTER_PORT": "29777", "CONFIG_NAME": "demo"}
    r = sandbox("slurm_array_batch.sbatch", *AWKWARD_ARGS, env=env)
    assert r.rc == 0, r.stderr
    expected = array_torchrun_argv(jsonl, 5, 8, gpus=2, endpoint="localhost:29777", config="demo") + AWKWARD_ARGS
    assert r.only("torchrun") == expected


def test_array_quotes_a_path_hydra_would_misread(sandbox):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = sandbox.work / "it's, a [batch].jsonl"
    path.write_text("{}\n")
    r = sandbox("slurm_array_batch.sbatch", env={**SLURM_ARRAY, "BATCH_JSONL": str(path)})
    assert r.rc == 0, r.stderr
    (arg,) = [a for a in r.only("torchrun") if a.startswith("batch.jsonl=")]
    assert OverridesParser.create().parse_override(arg).value() == str(path)


@pytest.mark.parametrize("batch_jsonl, message", [(None, "BATCH_JSONL is not set"), ("", "BATCH_JSONL is not set"),
                                                  ("missing.jsonl", "is not a readable file")])
def test_array_requires_batch_jsonl(sandbox, batch_jsonl, message):
    env = dict(SLURM_ARRAY)
    if batch_jsonl is not None:
        env["BATCH_JSONL"] = batch_jsonl
    r = sandbox("slurm_array_batch.sbatch", *USER_ARGS, env=env)
    assert r.rc == 2
    assert message in r.stderr
    assert not r.calls


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"SLURM_ARRAY_TASK_ID": None}, "SLURM_ARRAY_TASK_ID is not set"),  # plain sbatch, no --array
        # --array=1-4: shard 0 would never run
        ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "4"}, "0..N-1"),
        # --array=0-6:2: four tasks, ids up to 6, shards 1 3 5 would be skipped
        ({"SLURM_ARRAY_TASK_MAX": "6", "SLURM_ARRAY_TASK_STEP": "2"}, "0..N-1"),
        ({"SHARD_INDEX": "8", "NUM_SHARDS": "8"}, "is not below NUM_SHARDS"),
        ({"NUM_SHARDS": "0"}, "at least 1"),
        ({"NUM_SHARDS": "four"}, "integers"),
    ],
)
def test_array_rejects_shardings_that_lose_lines(sandbox, jsonl, overrides, message):
    env = {**SLURM_ARRAY, "BATCH_JSONL": jsonl}
    for key, value in overrides.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    r = sandbox("slurm_array_batch.sbatch", env=env)
    assert r.rc == 2, r.stderr
    assert message in r.stderr
    assert not r.calls
