#!/usr/bin/env bash
# One node, no scheduler: start one gen3c_dist.run process per GPU with torchrun.
#
#   launch/torchrun_local.sh input.image=x.png trajectory.type=zoom_in
#
# Every argument is a Hydra override handed to the runner unchanged. Environment overrides (see launch/README.md):
#   NGPU         processes to start (default: `gpu`, torchrun's own count of the GPUs this process may use;
#                1 on a machine without one)
#   MASTER_PORT  rendezvous port on localhost (default 29500)
#   CONFIG_NAME  Hydra config (default gen3c_7b)
#   LOG_RANKS    local ranks whose output reaches the console (default 0); every rank is still tee'd (--tee 3)
#                to LOG_DIR/<run id>_*/attempt_0/<local rank>/{stdout,stderr}.log
#   LOG_DIR      torchrun --log-dir (default logs/torchrun, relative to the current directory): torchrun's own
#                default is an unannounced /tmp/torchelastic_* directory, where the tee'd files are lost from view
#   TORCHRUN     launcher command, may be several words, e.g. "python -m torch.distributed.run" (default torchrun)
#
# Rendezvous: c10d on localhost:$MASTER_PORT rather than --standalone. --standalone picks a free port itself and
# silently ignores --rdzv-endpoint, so MASTER_PORT could not be chosen; an explicit port is what lets two runs
# share a node (give each its own MASTER_PORT) and matches the Slurm scripts. A port already in use fails at
# start with "address already in use": pick another MASTER_PORT.
set -euo pipefail

# torchrun counts the GPUs itself with --nproc_per_node=gpu (torch.cuda.device_count(), so CUDA_VISIBLE_DEVICES
# is honoured), but it refuses that value when CUDA is unavailable. The script only decides whether there is a GPU
# at all: none when CUDA_VISIBLE_DEVICES is set and lists no device, or when `nvidia-smi -L` is missing, fails
# (no driver) or lists none; then it starts 1 process, the CPU run.
has_gpu() {
    local out
    if [[ -n "${CUDA_VISIBLE_DEVICES+set}" && -z "${CUDA_VISIBLE_DEVICES//,/}" ]]; then
        return 1
    fi
    out="$(nvidia-smi -L 2>/dev/null)" || return 1
    [[ $'\n'"$out" == *$'\n'GPU\ * ]]
}

if [[ -z "${NGPU:-}" ]]; then
    if has_gpu; then NGPU=gpu; else NGPU=1; fi
fi
MASTER_PORT="${MASTER_PORT:-29500}"
CONFIG_NAME="${CONFIG_NAME:-gen3c_7b}"
LOG_RANKS="${LOG_RANKS:-0}"
LOG_DIR="${LOG_DIR:-logs/torchrun}"
TORCHRUN="${TORCHRUN:-torchrun}"

# TORCHRUN is split on whitespace on purpose so a launcher with arguments works where torchrun is not on PATH.
read -r -a torchrun_cmd <<< "$TORCHRUN"
cmd=(
    "${torchrun_cmd[@]}"
    --nnodes=1
    --nproc_per_node="$NGPU"
    --rdzv-backend=c10d
    --rdzv-endpoint="localhost:$MASTER_PORT"
    --log-dir "$LOG_DIR"
    --local-ranks-filter "$LOG_RANKS"
    --tee 3
    -m gen3c_dist.run
    --config-name "$CONFIG_NAME"
    "$@"
)

# Shell-quoted (%q), so the printed line can be pasted back into a shell as is.
printf '+' >&2
printf ' %q' "${cmd[@]}" >&2
printf '\n' >&2
exec "${cmd[@]}"
