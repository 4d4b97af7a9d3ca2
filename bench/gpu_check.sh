#!/usr/bin/env bash
# One command on a CUDA machine: builds the dense CRF extension in place, then runs
# bench/gpu_check.py from the checkout (PYTHONPATH; nothing is installed, no pip) and prints its
# table: pytest -m cuda, SEC s/iteration by part (fp32/TF32 and bf16), deploy img/s at 375x500
# with the full-resolution CRF, engine / direct torch, peak GPU memory. At most 8 minutes.
#
#   bash bench/gpu_check.sh              # on the GPU machine
#   bash bench/gpu_check.sh --dry        # the same code on CPU at tiny sizes (CI)
#   bash bench/gpu_check.sh --no-build   # use the krahenbuhl2013 already importable, build nothing
#
# Needs a Python with torch (CUDA build, 2.11 or newer), numpy, scipy, Pillow, PyYAML, protobuf,
# tqdm, pytest, setuptools and pybind11 (OpenCV optional: without it the check's data layer
# resizes with scipy, and says so). PYTHON picks the interpreter (default python3);
# GPU_CHECK_TIMEOUT the limit in seconds (default 480).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
limit="${GPU_CHECK_TIMEOUT:-480}"
build=1
args=()
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        *) args+=("$arg") ;;
    esac
done

crf_path=""
if [ "$build" = 1 ]; then
    echo "gpu_check.sh: building CRF/ in place (krahenbuhl2013._core)"
    (cd "$repo/CRF" && NPY_NUM_BUILD_JOBS="$(nproc)" "$python" setup.py -q build_ext --inplace) \
        || { echo "gpu_check.sh: building the CRF extension failed (needs setuptools, pybind11, a C++17 compiler)" >&2; exit 3; }
    crf_path="$repo/CRF/src:"
fi
export PYTHONPATH="${crf_path}$repo/pylayers:$repo${PYTHONPATH:+:$PYTHONPATH}"

cd "$repo"
# OpenMP threads that sleep instead of spinning while they wait (as training/train.sh)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
"$python" - <<'EOF' || exit 3
import importlib, sys
missing = [m for m in ("torch", "numpy", "scipy", "PIL", "yaml", "google.protobuf", "tqdm", "pytest", "krahenbuhl2013")
           if importlib.util.find_spec(m.split(".")[0]) is None]
if missing:
    sys.exit(f"gpu_check.sh: missing Python modules {missing} (nothing is installed by this script)")
EOF
exec timeout "$limit" "$python" bench/gpu_check.py ${args[@]+"${args[@]}"}
