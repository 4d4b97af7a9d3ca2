"""The committed schema module loads and works on every protobuf a user is likely to have.

protoc's own gencode pins the runtime to its release (the module once demanded protobuf >=
7.35.1, and every prototxt parse failed with VersionError under 6.33). Here each protobuf
release line from 4.21 to 7.x is installed into a throwaway venv (pip, from the package index;
skipped with the reason where pip cannot install it), under both backends (upb and pure
Python), and must parse SEC's train net and solver to the very bytes this process parses
them to.
"""
import hashlib
import os
import subprocess
import sys
import venv

import pytest
from google.protobuf import text_format

from conftest import REPO_ROOT
from sec.proto import caffe_pb2

RUNTIMES = ("4.21.12", "4.25.9", "5.29.6", "6.33.6", "7.34.0")
"""One release per major line, the oldest supported first; 7.34.0 is older than the gencode
the module once pinned (7.35.1)."""
BACKENDS = ("upb", "python")
PROTOTXTS = ("models/sec/train.prototxt", "models/sec/solver.prototxt")
PIP_TIMEOUT_S = 300

CHECK = """
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from google.protobuf import __version__, text_format
from sec.proto import caffe_pb2
digest = hashlib.sha256()
for path, message in zip(sys.argv[2:], (caffe_pb2.NetParameter, caffe_pb2.SolverParameter)):
    parsed = text_format.Parse(open(path).read(), message())
    data = parsed.SerializeToString(deterministic=True)
    assert message.FromString(data) == parsed
    digest.update(data)
print(__version__, digest.hexdigest())
"""


def _digest_here():
    digest = hashlib.sha256()
    for path, message in zip(PROTOTXTS, (caffe_pb2.NetParameter, caffe_pb2.SolverParameter)):
        digest.update(text_format.Parse((REPO_ROOT / path).read_text(), message()).SerializeToString(
            deterministic=True))
    return digest.hexdigest()


@pytest.fixture(scope="module")
def runtime_python(tmp_path_factory):
    """version -> the Python of a venv holding only that protobuf (made on first use)."""
    made = {}

    def python(version):
        if version not in made:
            folder = tmp_path_factory.mktemp(f"protobuf-{version}")
            venv.create(folder, with_pip=True)
            exe = folder / "bin" / "python"
            install = subprocess.run([str(exe), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                      f"protobuf=={version}"], capture_output=True, text=True,
                                     timeout=PIP_TIMEOUT_S)
            made[version] = (exe, install.stderr.strip()[-300:] if install.returncode else None)
        exe, failure = made[version]
        if failure:
            pytest.skip(f"pip could not install protobuf=={version}: {failure}")
        return exe
    return python


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("version", RUNTIMES)
def test_schema_loads_on_runtime(runtime_python, version, backend):
    exe = runtime_python(version)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    if backend == "python":
        env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
    result = subprocess.run([str(exe), "-I", "-c", CHECK, str(REPO_ROOT), *(str(REPO_ROOT / p) for p in PROTOTXTS)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found_version, digest = result.stdout.split()
    assert found_version == version
    assert digest == _digest_here()


def test_check_runs_in_this_process():
    """The venv check's own code, here: proves CHECK is sound before blaming a runtime."""
    result = subprocess.run([sys.executable, "-c", CHECK, str(REPO_ROOT), *(str(REPO_ROOT / p) for p in PROTOTXTS)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[1] == _digest_here()
