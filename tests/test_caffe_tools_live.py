"""The `caffe` tool and the upgrade tools against BVLC Caffe's own binaries, run side by side.

Skipped unless $SEC_CAFFE_PYTHON names the Python pycaffe was built for (the binaries are found
beside that pycaffe, as sec.bvlc_caffe finds them; ../shared/caffe/build.sh installs both).

* `caffe test` and `caffe time` on the SEC deploy net (narrowed as bench/caffe_reference.py narrows
  it; the Caffe-written tests/fixtures/caffe/sec_init.caffemodel): the same per-batch scores to
  float32 rounding (as printed, 6 digits), the same means, the same per-layer lines.
* `caffe train` on a small classifier: caffe.cpp's own lines, in order, are the same.
* The upgrade fixtures regenerate identically from the real upgrade tools.
* `extract_features` (when sec.caffe.db is there): the same LMDB keys and Datum records.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import live_caffe_python
from caffe_tools_helpers import REPO_ROOT, SUBPROCESS_TIMEOUT_S, caffe_command, run, tool_env, write_tiny_classifier
from sec import bvlc_caffe
from sec.caffe import formats
from sec.proto import caffe_pb2

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "caffe"
GLOG_ANY = re.compile(r"^([IWEF])\d{4,8} \d\d:\d\d:\d\d\.\d{6} +\d+ ([\w.]+):\d+\] (.*)$")
CAFFE_TOOL_FILES = {"caffe.cpp"}                                    # the real tool's own lines
OUR_TOOL_FILES = {"caffe.py", "caffe_train.py", "layer_timer.py"}  # ours
NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]\d+)?|-?nan|-?inf")
SCORE_RTOL = 2e-5          # 6 printed significant digits of float32 values that agree to ~1e-6
SCORE_ATOL = 1e-6


@pytest.fixture(scope="module")
def caffe_bin():
    value = live_caffe_python()
    try:
        folder = bvlc_caffe.locate_pycaffe(value)
        return bvlc_caffe.find_caffe_binary(None, folder / "caffe" / "__init__.py").parent
    except bvlc_caffe.CaffeUnavailable as err:
        pytest.skip(str(err))


def tool_lines(stderr, files):
    """[(level, message)] of the glog lines logged from `files`."""
    found = [GLOG_ANY.match(line) for line in stderr.splitlines()]
    return [(m.group(1), m.group(3)) for m in found if m and m.group(2) in files]


def run_both(caffe_bin, args, cwd):
    real = subprocess.run([str(caffe_bin / "caffe"), *[str(a) for a in args]], cwd=cwd, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S, env=dict(os.environ, OMP_NUM_THREADS="1"))
    ours = run(caffe_command(*args), cwd=cwd)
    assert real.returncode == 0, real.stderr[-3000:]
    assert ours.returncode == 0, ours.stderr[-3000:]
    return tool_lines(real.stderr, CAFFE_TOOL_FILES), tool_lines(ours.stderr, OUR_TOOL_FILES)


@pytest.fixture(scope="module")
def deploy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy")
    manifest = json.loads((FIXTURES / "sec_nets.json").read_text())
    path = folder / "deploy.prototxt"
    path.write_text(manifest["deploy_prototxt"])
    return {"folder": folder, "model": path, "weights": FIXTURES / "sec_init.caffemodel"}


def _scores(lines):
    """{(batch, blob): [values]} of 'Batch i, name = v' lines and {name: mean text} of the rest."""
    batches, means = {}, {}
    for _, text in lines:
        match = re.fullmatch(r"Batch (\d+), (\S+) = (\S+)", text)
        if match:
            batches.setdefault((int(match.group(1)), match.group(2)), []).append(float(match.group(3)))
        elif " = " in text:
            means[text.split(" = ")[0]] = float(text.split(" = ")[1].split(" ")[0])
    return batches, means


def test_caffe_test_scores_the_deploy_net_as_caffe(caffe_bin, deploy):
    args = ["test", "--model", deploy["model"], "--weights", deploy["weights"], "--iterations", 2]
    real, ours = run_both(caffe_bin, args, deploy["folder"])
    real_batches, real_means = _scores(real)
    our_batches, our_means = _scores(ours)
    assert real_batches.keys() == our_batches.keys() == {(0, "fc8-SEC-Softmax"), (1, "fc8-SEC-Softmax")}
    for key, values in real_batches.items():
        assert len(values) == 21 * 6 * 6
        np.testing.assert_allclose(our_batches[key], values, rtol=SCORE_RTOL, atol=SCORE_ATOL)
    assert real_means.keys() == our_means.keys()
    np.testing.assert_allclose([our_means[k] for k in real_means], list(real_means.values()), rtol=SCORE_RTOL,
                               atol=SCORE_ATOL)
    shape = [NUMBER.sub("#", text) for _, text in real if not text.startswith("Batch")]
    assert [NUMBER.sub("#", text) for _, text in ours if not text.startswith("Batch")] == shape
    assert shape[:2] == ["Use CPU.", "Running for # iterations."] and shape[2] == "Loss: #"


def test_caffe_time_has_caffes_lines_for_the_deploy_net(caffe_bin, deploy):
    real, ours = run_both(caffe_bin, ["time", "--model", deploy["model"], "--iterations", 2], deploy["folder"])
    masked = lambda lines: [NUMBER.sub("#", text) for _, text in lines]
    assert masked(ours) == masked(real)
    per_layer = [text for _, text in real if "\tforward: " in text or "\tbackward: " in text]
    layers = formats.read_net_prototxt(deploy["model"]).layer
    assert [text.split("\t")[0].strip() for text in per_layer] == [lp.name for lp in layers for _ in range(2)]
    assert all(float(NUMBER.search(text.split(": ")[1]).group(0)) >= 0 for _, text in ours if ": " in text
               and text.endswith(" ms.") and "\t" in text)


def test_caffe_train_logs_caffe_cpps_lines(caffe_bin, tmp_path):
    paths = write_tiny_classifier(tmp_path, max_iter=2, snapshot=0)
    real, ours = run_both(caffe_bin, ["train", "--solver", paths["solver"]], tmp_path)
    assert ours == real == [("I", "Use CPU."), ("I", "Starting Optimization"), ("I", "Optimization Done.")]


def test_upgrade_fixtures_regenerate_from_caffes_tools(caffe_bin, tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "caffe_tools_reference.py"), "--caffe-bin",
                             str(caffe_bin), "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_S, env=tool_env())
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "tools_upgrade.json").read_text()) == \
        json.loads((FIXTURES / "tools_upgrade.json").read_text())


@pytest.mark.skipif(importlib.util.find_spec("sec.caffe.db") is None,
                    reason="sec.caffe.db (the data helper's LMDB/LevelDB module) is not in this checkout")
def test_extract_features_writes_caffes_records(caffe_bin, tmp_path):
    lmdb = pytest.importorskip("lmdb")
    from caffe_tools_helpers import write_tiny_classifier
    from sec import caffe
    paths = write_tiny_classifier(tmp_path, images=4, batch=2)
    weights = tmp_path / "w.caffemodel"
    caffe.Net(str(paths["net"]), caffe.TEST).save(str(weights))
    found = {}
    for who, argv in (("real", [str(caffe_bin / "extract_features")]), ("ours", extract_command())):
        outs = [tmp_path / f"{who}_ip", tmp_path / f"{who}_data"]
        result = subprocess.run(argv + [str(weights), str(paths["net"]), "ip,data", ",".join(map(str, outs)), "3",
                                        "lmdb"], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                                env=tool_env())
        assert result.returncode == 0, result.stderr[-3000:]
        found[who] = [_lmdb_records(lmdb, out) for out in outs]
    for real, ours in zip(found["real"], found["ours"]):
        assert list(real) == list(ours) == [f"{i:010d}".encode() for i in range(6)]
        for key in real:
            a, b = (caffe_pb2.Datum.FromString(records[key]) for records in (real, ours))
            assert (a.channels, a.height, a.width, a.label, a.encoded) == (b.channels, b.height, b.width, b.label,
                                                                          b.encoded)
            np.testing.assert_allclose(b.float_data, a.float_data, rtol=SCORE_RTOL, atol=SCORE_ATOL)


def extract_command():
    return [sys.executable, "-m", "sec.caffe.tools.extract_features"]


def _lmdb_records(lmdb, path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        records = {key: value for key, value in txn.cursor()}
    env.close()
    return records


def test_usage_message_is_caffes(caffe_bin):
    real = subprocess.run([str(caffe_bin / "caffe")], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    ours = run(caffe_command())
    assert real.returncode == ours.returncode == 0
    flags_from = re.compile(r"^  Flags from .*:$", re.M)
    assert flags_from.sub("  Flags from", ours.stdout) == flags_from.sub("  Flags from", real.stdout)
