#!/usr/bin/env bash
# Install the wheels of `make gpu-bundle` on the GPU machine, which reaches no registry:
#
#   bash benchmarks/gpu_bundle_install.sh [WHEEL_DIR] [TARGET]      # defaults: .whl /tmp/site
#   export PYTHONPATH=/tmp/site                                      # then run the check with it
#
# The wheels go into their own folder (--target), with no index and no dependency resolution, so the image's
# python3, its torch and everything else it holds stay as they are; the script checks that torch is still the
# same one afterwards and that every bundled package imports. Set PYTHON to use another interpreter.
set -euo pipefail

wheel_dir=${1:-.whl}
target=${2:-/tmp/site}
python=${PYTHON:-python3}

shopt -s nullglob
wheels=("$wheel_dir"/*.whl)
if (( ${#wheels[@]} == 0 )); then
    echo "gpu_bundle_install: no wheels in $wheel_dir: run 'make gpu-bundle' here and carry $wheel_dir" >&2
    exit 2
fi
for wheel in "${wheels[@]}"; do
    case "$(basename "$wheel")" in
        torch-*|torchvision-*|torchaudio-*|triton-*|nvidia_*)
            echo "gpu_bundle_install: refusing $wheel: the image's torch stack must stay as it is" >&2
            exit 2 ;;
    esac
done

torch_of() { PYTHONPATH="$1" "$python" -c 'import torch; print(torch.__version__, torch.__file__)'; }
before=$(torch_of "${PYTHONPATH:-}")
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "${wheels[@]}"
after=$(torch_of "$target${PYTHONPATH:+:$PYTHONPATH}")
if [[ "$before" != "$after" ]]; then
    echo "gpu_bundle_install: torch changed from '$before' to '$after'" >&2
    exit 1
fi
PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" "$python" - <<'EOF'
import importlib, imageio_ffmpeg
names = ("hydra", "omegaconf", "antlr4", "imageio_ffmpeg")
versions = {name: getattr(importlib.import_module(name), "__version__", "?") for name in names}
print("gpu_bundle_install: imports", versions, "ffmpeg", imageio_ffmpeg.get_ffmpeg_exe())
EOF
echo "gpu_bundle_install: ${#wheels[@]} wheels in $target; torch unchanged ($after); export PYTHONPATH=$target"
