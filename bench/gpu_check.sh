#!/usr/bin/env bash
# One command on a CUDA machine: checks the Python, uses the installed dense CRF extension
# (krahenbuhl2013) or else builds CRF/ in place, checks every module the check needs by importing
# it, then runs bench/gpu_check.py from the checkout (PYTHONPATH; nothing is installed, no pip),
# which prints one row per part as it finishes (docs/gpu.md says what each row means).
#
#   bash bench/gpu_check.sh              # on the GPU machine (about 4 minutes on one H100)
#   bash bench/gpu_check.sh --dry        # the same code on CPU at tiny sizes (CI)
#   bash bench/gpu_check.sh --no-build   # never build CRF/: the installed krahenbuhl2013 or stop
#
# Needs a Python (3.9 or newer) with torch (CUDA build, 2.11 or newer), numpy, scipy, Pillow,
# PyYAML, protobuf (4.21 to 7.x), tqdm and pytest; setuptools and pybind11 only where CRF/ must be
# built (OpenCV optional: without it the check's data layer resizes with scipy, and says so).
# PYTHON picks the interpreter (default python3); GPU_CHECK_TIMEOUT the limit in seconds (default
# 480); other flags go to gpu_check.py (--budget, --skip-tests, --threads).
# Exit status: gpu_check.py's (0: every part ran; 1: a part failed), 3: the setup is not usable,
# 124: GPU_CHECK_TIMEOUT ran out.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
limit="${GPU_CHECK_TIMEOUT:-480}"
build=auto
args=()
for arg in "$@"; do
    case "$arg" in
        --no-build) build=never ;;
        *) args+=("$arg") ;;
    esac
done

fail() { echo "gpu_check.sh: $*" >&2; exit 3; }

# 1. the interpreter itself, before anything is blamed on what it lacks
if ! command -v "$python" >/dev/null 2>&1; then
    fail "no Python interpreter '$python' (PYTHON=${PYTHON:-unset}): set PYTHON to a Python 3.9+ with torch"
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1; then
    fail "'$python' does not run as Python 3.9 or newer (PYTHON=${PYTHON:-unset})"
fi

cd "$repo"
export PYTHONPATH="$repo/pylayers:$repo${PYTHONPATH:+:$PYTHONPATH}"

# 2. every module the check imports (but the CRF), imported for real: a module that is found but
#    does not load, such as a schema the protobuf runtime refuses, is caught here
preflight() {
    "$python" - "$@" <<'EOF' || exit 3
import importlib
import sys

broken = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any failure to load is reported by name, nothing hidden
        broken.append(f"{name} ({type(err).__name__}: {err})")
if broken:
    sys.exit("gpu_check.sh: these Python modules do not import (nothing is installed by this script): "
             + "; ".join(broken))
EOF
}
preflight torch numpy scipy PIL yaml google.protobuf tqdm pytest pylayers sec.proto.caffe_pb2

# 3. the dense CRF: the installed package when it imports, else CRF/ built in place
if "$python" -c 'import krahenbuhl2013' >/dev/null 2>&1; then
    echo "gpu_check.sh: using the installed krahenbuhl2013"
elif [ "$build" = never ]; then
    fail "krahenbuhl2013 does not import and --no-build was given: pip install ./CRF, or drop --no-build"
else
    "$python" -c 'import setuptools, pybind11' >/dev/null 2>&1 \
        || fail "krahenbuhl2013 is not installed, and building CRF/ in place needs setuptools and pybind11 (or pip install ./CRF)"
    echo "gpu_check.sh: krahenbuhl2013 is not installed: building CRF/ in place (krahenbuhl2013._core)"
    (cd "$repo/CRF" && NPY_NUM_BUILD_JOBS="$(nproc)" "$python" setup.py -q build_ext --inplace) \
        || fail "building the CRF extension in CRF/ failed (above; needs a C++17 compiler)"
    export PYTHONPATH="$repo/CRF/src:$PYTHONPATH"
    preflight krahenbuhl2013
fi

# 4. the check; OpenMP threads that sleep instead of spinning while they wait (as training/train.sh)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
status=0
timeout "$limit" "$python" bench/gpu_check.py ${args[@]+"${args[@]}"} || status=$?
if [ "$status" = 124 ]; then
    echo "gpu_check.sh: stopped after GPU_CHECK_TIMEOUT=${limit} s (the rows above are complete)" >&2
fi
exit "$status"
