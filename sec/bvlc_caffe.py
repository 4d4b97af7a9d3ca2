"""Running BVLC Caffe's own `caffe` tool on this project's prototxts (`train.sh --engine caffe`).

Caffe runs the SEC Python layers in the interpreter pycaffe was built for (with
../shared/caffe/build.sh: Debian's python3 with numpy 1.x, seen through the venv
/opt/caffe/venv), embedded in the `caffe` binary. Two facts shape the environment built here:

* The embedded interpreter has no executable of its own: it looks up `python3` on PATH to find
  its prefix and site-packages. With another Python first on PATH (a project venv with numpy 2)
  it imports that Python's numpy and fails ("_ARRAY_API not found"). So the Caffe Python's own
  folder goes first on PATH.
* PYTHONPATH is replaced, not extended: it holds the checkout's `pylayers` folder and the folder
  of pycaffe (as the Caffe Python finds it under the caller's environment: a venv's caffe.pth or
  a PYTHONPATH entry), so Caffe runs the checkout's layers and sees no other Python's packages.
  The dense CRF (`krahenbuhl2013`, compiled) must be installed in the Caffe Python:
  ``<caffe python> -m pip install ./CRF`` (``./pylayers ./CRF`` to run `caffe` by hand).

`locate_pycaffe` and `probe` run the Caffe Python before `caffe train` starts: the first finds
pycaffe, the second checks that caffe, pylayers, krahenbuhl2013 and numpy import in the
environment `caffe train` will get.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PYLAYERS_FOLDER = REPO_ROOT / "pylayers"
"""On PYTHONPATH, this folder makes `import pylayers` load the checkout's package."""
CAFFE_PYTHON_ENV = "SEC_CAFFE_PYTHON"
DEFAULT_CAFFE_PYTHON = Path("/opt/caffe/venv/bin/python")
"""Where ../shared/caffe/build.sh puts the Python that sees pycaffe."""
PROBE_TIMEOUT_S = 120
PROBE = """
import json, caffe, numpy, pylayers, krahenbuhl2013
print(json.dumps({"caffe": caffe.__file__, "pylayers": pylayers.__file__, "numpy": numpy.__version__,
                  "krahenbuhl2013": krahenbuhl2013.__file__,
                  "caffe_base": issubclass(pylayers.SeedLossLayer, caffe.Layer)}))
"""
INSTALL_HINT = "install what the SEC layers need into it: {python} -m pip install ./pylayers ./CRF"
BVLC_ONLY = {"SEC_CAFFE": "bvlc"}
"""Caffe's Python must import BVLC's pycaffe, never this project's `caffe` package (docs/caffe/pycaffe.md),
which is on sys.path wherever a Python starts in the checkout."""


class CaffeUnavailable(FileNotFoundError):
    """No usable Caffe: the Python, the binary or a module the layers need is missing."""


def find_caffe_python(explicit=None, environ=None):
    """The Python pycaffe was built for: `explicit`, else $SEC_CAFFE_PYTHON, else
    /opt/caffe/venv/bin/python when it exists. CaffeUnavailable when none is there."""
    environ = os.environ if environ is None else environ
    for source, value in (("--caffe-python", explicit), (CAFFE_PYTHON_ENV, environ.get(CAFFE_PYTHON_ENV))):
        if value:
            path = Path(value)
            if not path.is_file():
                raise CaffeUnavailable(f"{source}: Caffe's Python {path} not found")
            return path
    if DEFAULT_CAFFE_PYTHON.is_file():
        return DEFAULT_CAFFE_PYTHON
    raise CaffeUnavailable(f"no Caffe Python: pass --caffe-python PATH or set {CAFFE_PYTHON_ENV} (the Python "
                           f"that imports pycaffe; bash ../shared/caffe/build.sh makes {DEFAULT_CAFFE_PYTHON})")


def _run_python(caffe_python, code, env):
    """(stdout's last line, None) of `code` run by the Caffe Python, or (None, why it failed)."""
    try:
        result = subprocess.run([str(caffe_python), "-c", code], env=env, capture_output=True, text=True,
                                timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"did not run: {err}"
    if result.returncode != 0:
        return None, (result.stderr.strip().splitlines() or ["(no message)"])[-1]
    return (result.stdout.strip().splitlines() or [""])[-1], None


def locate_pycaffe(caffe_python, environ=None):
    """The folder holding pycaffe's `caffe` package, as the Caffe Python imports it under
    `environ` (default os.environ); CaffeUnavailable when it cannot import caffe."""
    env = dict(os.environ if environ is None else environ, GLOG_minloglevel="2", **BVLC_ONLY)
    found, error = _run_python(caffe_python, "import caffe; print(caffe.__file__)", env)
    if error is not None:
        raise CaffeUnavailable(f"Caffe's Python {caffe_python} cannot import caffe: {error}")
    return Path(found).resolve().parents[1]


def caffe_environment(caffe_python, pycaffe_folder=None, environ=None):
    """os.environ for `caffe train`: the Caffe Python's folder first on PATH, PYTHONPATH = the
    checkout's pylayers (+ `pycaffe_folder`) only, PYTHONHOME dropped (see the module docstring),
    SEC_CAFFE=bvlc (`import caffe` is BVLC's pycaffe there)."""
    env = dict(os.environ if environ is None else environ, **BVLC_ONLY)
    env.pop("PYTHONHOME", None)
    env["PATH"] = os.pathsep.join([str(Path(caffe_python).parent), *filter(None, [env.get("PATH")])])
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (PYLAYERS_FOLDER, pycaffe_folder) if p is not None)
    return env


def probe(caffe_python, env):
    """Import caffe, numpy, pylayers and krahenbuhl2013 in the Caffe Python under `env`; returns
    their files and numpy's version (a dict). CaffeUnavailable naming the failed import otherwise."""
    found, error = _run_python(caffe_python, PROBE, dict(env, GLOG_minloglevel="2"))
    if error is not None:
        raise CaffeUnavailable(f"Caffe's Python {caffe_python}: {error}; " + INSTALL_HINT.format(python=caffe_python))
    info = json.loads(found)
    if not info["caffe_base"]:
        raise CaffeUnavailable(f"Caffe's Python {caffe_python}: pylayers ({info['pylayers']}) does not "
                               f"subclass caffe.Layer ({info['caffe']})")
    return info


def find_caffe_binary(explicit, caffe_module_file, environ=None):
    """The `caffe` tool: `explicit`, else beside the pycaffe that `caffe_module_file`
    (caffe/__init__.py) belongs to (<prefix>/python/caffe -> <prefix>/bin/caffe for an install,
    <root>/build/tools/caffe for a source tree), else `caffe` on PATH."""
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise CaffeUnavailable(f"--caffe-bin: {path} is not an executable file")
        return path
    prefix = Path(caffe_module_file).resolve().parents[2]
    for candidate in (prefix / "bin" / "caffe", prefix / "build" / "tools" / "caffe"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("caffe", path=(os.environ if environ is None else environ).get("PATH"))
    if found is None:
        raise CaffeUnavailable(f"no `caffe` binary in {prefix}/bin or on PATH: pass --caffe-bin PATH")
    return Path(found)
