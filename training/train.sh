#!/usr/bin/env bash
# Train SEC. With no arguments: the synthetic set (generated when absent), the small synthetic
# net, then evaluation on its val split. With --voc/--cues/--weights: the paper's recipe.
# `bash training/train.sh --help` lists every flag. --engine caffe hands the same net and solver
# to BVLC Caffe's `caffe train`, whose Python layers run in Caffe's own Python (--caffe-python,
# default $SEC_CAFFE_PYTHON or /opt/caffe/venv/bin/python; see sec/bvlc_caffe.py).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
# The checkout's `sec` wins even when the package is not pip-installed (-e . installs it too).
export PYTHONPATH="${repo}${PYTHONPATH:+:${PYTHONPATH}}"
# OpenMP threads that sleep instead of spinning while they wait: on a machine whose cores are
# busy with other work, spinning threads make each iteration several times slower.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec python3 "${repo}/training/train.py" "$@"
