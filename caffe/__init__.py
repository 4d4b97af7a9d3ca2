"""`import caffe` for code written for BVLC pycaffe: a real pycaffe when there is one, else sec.caffe.

Installed with the project (setup.py lists this package), so scripts and Python-layer modules written
for pycaffe run unedited. The environment variable SEC_CAFFE chooses, when `caffe` is first imported:

* `auto` (default): a real pycaffe on sys.path keeps precedence (a `caffe/` folder with `__init__.py`
  and its compiled `_caffe` module, e.g. BVLC Caffe's `python/` on PYTHONPATH or on a .pth line,
  wherever it sits on sys.path relative to this package); without one, this project's engine.
* `sec`: this project's engine, even when a real pycaffe is on the path.
* `bvlc`: the real pycaffe; ImportError when there is none.

With the engine, `caffe` is this module with pycaffe's names taken from `sec.caffe` (the same
objects: `caffe.Net is sec.caffe.Net`), `caffe.layers` being net_spec's layers, and pycaffe's
submodules (`caffe.io`, `caffe.net_spec`, `caffe.draw`, `caffe.coord_map`, `caffe.classifier`,
`caffe.detector`, `caffe.pycaffe`, `caffe.proto`, `caffe.proto.caffe_pb2`) are aliases of the engine's
modules (`caffe.io is sec.caffe.io`), made by a meta-path finder, so no class exists twice.
`caffe.__file__` tells which one was loaded.
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

ENGINE_ENV = "SEC_CAFFE"
CHOICES = ("auto", "sec", "bvlc")
_HERE = Path(__file__).resolve().parent


def engine_choice(environ=None):
    """The SEC_CAFFE setting (default auto); ImportError naming the variable when it is unknown."""
    value = (os.environ if environ is None else environ).get(ENGINE_ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ImportError(f"environment variable {ENGINE_ENV}={value!r}: need one of {', '.join(CHOICES)}")
    return value


def find_bvlc_pycaffe(path=None):
    """The folder of the first real pycaffe on `path` (default sys.path): a `caffe` folder with
    __init__.py and a compiled `_caffe` extension, other than this package; None when there is none."""
    for entry in sys.path if path is None else path:
        if not isinstance(entry, str):
            continue
        folder = Path(entry or os.getcwd()) / "caffe"
        try:
            if folder.resolve() == _HERE or not (folder / "__init__.py").is_file():
                continue
        except OSError:          # an unreadable or vanished sys.path entry holds no pycaffe
            continue
        if any((folder / f"_caffe{suffix}").is_file() for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            return folder
    return None


def _load_bvlc(folder):
    """Execute the real pycaffe at `folder` as the module `caffe` (it replaces this one in
    sys.modules, so the importer receives it); on failure nothing of it stays in sys.modules."""
    spec = importlib.util.spec_from_file_location(__name__, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[__name__] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as err:
        for name in [n for n in sys.modules if n.startswith(__name__ + ".")]:
            del sys.modules[name]
        err.add_note(f"`import caffe` loaded BVLC pycaffe from {folder} ({ENGINE_ENV}=auto or bvlc prefers a "
                     f"real pycaffe on sys.path); {ENGINE_ENV}=sec selects this project's engine (sec.caffe)")
        raise


class _AliasLoader(importlib.abc.Loader):
    """Makes `caffe.<name>` the engine's module object itself (sys.modules replacement: the
    import system then hands back that module, untouched)."""

    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        sys.modules[module.__name__] = importlib.import_module(self.target)


class _AliasFinder(importlib.abc.MetaPathFinder):
    """pycaffe's submodule names -> the engine's modules, while `caffe` is the engine's facade."""

    def __init__(self, facade, aliases):
        self.facade = facade
        self.aliases = aliases

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.aliases or sys.modules.get(__name__) is not self.facade:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(self.aliases[fullname]))


def _use_engine():
    """This module becomes pycaffe's namespace over sec.caffe (see the module docstring)."""
    from sec import caffe as engine
    aliases = {f"{__name__}.{name}": target for name, target in engine.LAZY_MODULES.items()}
    aliases[f"{__name__}.proto.caffe_pb2"] = "sec.proto.caffe_pb2"
    facade = sys.modules[__name__]
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder(facade, aliases))
    return engine


def __getattr__(name):
    """pycaffe's names, from the engine (`layers`: net_spec's, as pycaffe's package exports it)."""
    if _ENGINE is None:
        raise AttributeError(f"module 'caffe' has no attribute '{name}'")
    if name == "layers":
        return _ENGINE.net_spec.layers
    return getattr(_ENGINE, name)


def __dir__():
    return sorted(set(globals()) | set(dir(_ENGINE)) | {"layers"})


_ENGINE = None
_CHOICE = engine_choice()
_BVLC = find_bvlc_pycaffe() if _CHOICE != "sec" else None
if _BVLC is not None:
    _load_bvlc(_BVLC)
elif _CHOICE == "bvlc":
    raise ImportError(f"{ENGINE_ENV}=bvlc: no BVLC pycaffe on sys.path (a caffe/ folder with __init__.py and "
                      "its compiled _caffe module); put Caffe's python/ folder on PYTHONPATH")
else:
    _ENGINE = _use_engine()
    __all__ = sorted(set(_ENGINE.__all__) | set(_ENGINE.LAZY_MODULES) | {"layers"})
