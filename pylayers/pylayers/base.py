"""The layer base class and `param_str` parsing.

The layers subclass ``caffe.Layer`` when a real pycaffe is importable, so that Caffe can load
them through ``python_param { module: 'pylayers' layer: '...' }``. When ``import caffe`` gives the
SEC project's engine instead (its `caffe` package over sec.caffe), they subclass that engine's
``caffe.Layer`` as it is (the engine reports layer errors itself). Without any ``caffe`` (or with
the empty PyPI placeholder named ``caffe``) they use `PythonLayer` below, which behaves like
pycaffe's base for the engine that drives it.

Under real Caffe an exception that leaves a layer's setup / reshape / forward / backward turns
into ``boost::python::error_already_set``, which the ``caffe`` command-line tool does not catch:
it aborts (SIGABRT) without printing the Python error. The Caffe-side base (`caffe_base`)
therefore prints the layer's traceback to stderr before the exception propagates.
"""
import functools
import math
import sys
import traceback

import yaml

TRAIN, TEST = 0, 1


class PythonLayer:
    """Stand-in for ``caffe.Layer``: the engine constructs it with the LayerParameter (or None),
    then sets ``param_str`` and ``phase`` and calls setup / reshape / forward / backward."""

    def __init__(self, param=None):
        self.param = param
        python_param = getattr(param, "python_param", None)
        self.param_str = getattr(python_param, "param_str", "") or ""
        self.phase = getattr(param, "phase", TRAIN) if param is not None else TRAIN

    def setup(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.setup")

    def reshape(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.reshape")

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, top, propagate_down, bottom):
        raise NotImplementedError(f"{type(self).__name__}.backward")


def find_caffe_layer():
    """(caffe.Layer, None) when a real pycaffe imports, else (None, why not)."""
    try:
        import caffe
    # Deliberately broad: a placeholder or half-built `caffe` may fail in any way, and
    # pylayers must still import; the reason is kept in CAFFE_UNAVAILABLE_REASON.
    except Exception as err:  # noqa: BLE001
        return None, f"import caffe failed: {type(err).__name__}: {err}"
    layer = getattr(caffe, "Layer", None)
    if not isinstance(layer, type):
        return None, f"module caffe ({getattr(caffe, '__file__', '?')}) has no Layer class"
    return layer, None


LAYER_METHODS = ("setup", "reshape", "forward", "backward")
"""The methods Caffe calls on a Python layer."""


def report_errors(method):
    """``method`` wrapped so that an exception first prints the layer's traceback to stderr
    (once, however many wrapped methods it passes through), then propagates unchanged."""
    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self, *args)
        except BaseException as err:
            if not getattr(err, "_pylayers_reported", False):
                sys.stderr.write(f"pylayers: {type(self).__name__}.{method.__name__} failed "
                                 f"(param_str {getattr(self, 'param_str', '')!r}):\n{traceback.format_exc()}")
                sys.stderr.flush()
                try:
                    err._pylayers_reported = True
                except AttributeError:  # an exception type without a __dict__
                    pass
            raise
    return wrapper


def caffe_base(caffe_layer):
    """A subclass of ``caffe_layer`` (caffe.Layer) whose subclasses' `LAYER_METHODS` report their
    errors (`report_errors`): Caffe's command line would abort without the Python traceback."""
    class CaffeLayer(caffe_layer):
        def __init_subclass__(cls, **kwargs):
            super().__init_subclass__(**kwargs)
            for name in LAYER_METHODS:
                if name in vars(cls):
                    setattr(cls, name, report_errors(vars(cls)[name]))

    CaffeLayer.__qualname__ = CaffeLayer.__name__ = "Layer"
    return CaffeLayer


def is_real_pycaffe(layer):
    """Whether `layer` (a caffe.Layer) is BVLC pycaffe's, defined by its compiled `caffe._caffe`."""
    return layer.__module__ == "caffe._caffe"


CAFFE_LAYER, CAFFE_UNAVAILABLE_REASON = find_caffe_layer()
if CAFFE_LAYER is None:
    Layer = PythonLayer
elif is_real_pycaffe(CAFFE_LAYER):
    Layer = caffe_base(CAFFE_LAYER)
else:
    Layer = CAFFE_LAYER
"""Base class of every SEC layer: a reporting subclass of caffe.Layer under real Caffe, the engine's
caffe.Layer under `import caffe` of the SEC engine, else `PythonLayer`."""


def layer_label(layer):
    """'ClassName' or 'ClassName "name"' for error messages."""
    name = getattr(getattr(layer, "param", None), "name", "")
    return f'{type(layer).__name__} "{name}"' if name else type(layer).__name__


def parse_param_str(param_str, defaults, label):
    """Merge the YAML/JSON mapping in ``param_str`` over ``defaults``.

    An empty string means all defaults. Unknown keys, a non-mapping or invalid YAML raise
    ValueError naming ``label`` (the layer).
    """
    text = param_str or ""
    try:
        values = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise ValueError(f"{label}: param_str is not valid YAML/JSON: {err}") from err
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{label}: param_str must be a mapping, got {text!r}")
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"{label}: unknown param_str key(s) {unknown}; known: {sorted(defaults)}")
    merged = dict(defaults)
    merged.update(values)
    return merged


def float_param(params, key, label, valid, requirement):
    """params[key] as a finite float satisfying ``valid``; else ValueError naming layer, key and
    ``requirement`` (no parameter of these layers takes NaN or an infinity)."""
    try:
        value = float(params[key])
    except (TypeError, ValueError):
        raise ValueError(f"{label}: param_str {key} must be a number, got {params[key]!r}") from None
    if not math.isfinite(value) or not valid(value):
        raise ValueError(f"{label}: param_str {key} must be {requirement}, got {value}")
    return value
