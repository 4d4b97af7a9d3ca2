"""The SolverParameter as Caffe reads it: the file, its upgrades and checks, and the train and
test nets it names (Solver::Init, InitTrainNet, InitTestNets), plus the project's explicit
overrides of the train net (NetOverrides)."""
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from sec.caffe import formats
from sec.caffe.solvers.policies import PolicyError, check_policy
from sec.caffe.solvers.rules import RULES, check_rule
from sec.proto import caffe_pb2

TRAIN_PHASE, TEST_PHASE = 0, 1
TRAIN_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param")


class SolverConfigError(ValueError):
    """A solver field out of Caffe's range, missing, or contradicting another (names file and field)."""


@dataclass
class NetOverrides:
    """Explicit changes to the train net's prototxt, applied before the net is built.

    batch_size/source/root_folder/image_size (new_height = new_width) go to every ImageData
    layer; python_params maps a Python layer class name (e.g. 'AnnotationLayer') to keys merged
    into its YAML/JSON param_str.
    """
    batch_size: int | None = None
    source: str | None = None
    root_folder: str | None = None
    image_size: int | None = None
    python_params: dict | None = None

    def any(self):
        return any(v is not None for v in (self.batch_size, self.source, self.root_folder, self.image_size,
                                           self.python_params))


def apply_net_overrides(netparam, overrides):
    """Return a copy of `netparam` (NetParameter) with `overrides` applied."""
    netparam = type(netparam).FromString(netparam.SerializeToString())
    python_params = dict(overrides.python_params or {})
    for layer in netparam.layer:
        if layer.type == "ImageData":
            if overrides.batch_size is not None:
                layer.image_data_param.batch_size = overrides.batch_size
            if overrides.source is not None:
                layer.image_data_param.source = overrides.source
            if overrides.root_folder is not None:
                layer.image_data_param.root_folder = overrides.root_folder
            if overrides.image_size is not None:
                layer.image_data_param.new_height = overrides.image_size
                layer.image_data_param.new_width = overrides.image_size
        elif layer.type == "Python" and layer.python_param.layer in python_params:
            current = yaml.safe_load(layer.python_param.param_str) if layer.python_param.param_str else {}
            if not isinstance(current, dict):
                raise SolverConfigError(f"layer '{layer.name}': param_str is not a mapping: "
                                        f"{layer.python_param.param_str!r}")
            current.update(python_params.pop(layer.python_param.layer))
            layer.python_param.param_str = yaml.safe_dump(current, default_flow_style=True).strip()
    if python_params:
        raise SolverConfigError(f"net '{netparam.name}' has no Python layer {sorted(python_params)} to override")
    return netparam


def solver_type(param):
    """The solver's type string (Caffe's default "SGD"; the legacy enum is upgraded on reading)."""
    return param.type if param.HasField("type") else "SGD"


def read_solver(path):
    """Caffe's ReadSolverParamsFromTextFileOrDie: parse, upgrade `solver_type`, and give
    snapshot_prefix Caffe's default (the solver file without extension; a folder gets the
    solver file's stem appended)."""
    param = formats.read_solver_prototxt(str(path))
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = str(Path(path).with_suffix(""))
    elif os.path.isdir(param.snapshot_prefix):
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, Path(path).stem)
    return param


def check_solver(param, source, kind):
    """Every check Caffe makes of a SolverParameter (at Init, in the solver's constructor, at the
    first update), made before any net is built; SolverConfigError naming the file and field."""
    def fail(message):
        raise SolverConfigError(f"{source}: {message}")
    if kind not in RULES:
        fail(f"unknown solver type '{kind}' (known types: {', '.join(sorted(RULES))})")
    problem = check_rule(kind, param)
    if problem:
        fail(problem)
    if param.average_loss < 1:
        fail(f"average_loss should be >= 1, got {param.average_loss}")
    if param.iter_size < 1:
        fail(f"iter_size must be >= 1, got {param.iter_size}")
    if param.regularization_type not in ("L1", "L2"):
        fail(f"regularization_type '{param.regularization_type}' is not L1 or L2")
    if param.snapshot < 0:
        fail(f"snapshot must be >= 0, got {param.snapshot}")
    try:
        check_policy(param)
    except PolicyError as err:
        fail(str(err))


def train_net_source(param, source, override=None):
    """(prototxt path or NetParameter, description) of the train net: `override` (a path) when
    given, else the one of net / net_param / train_net / train_net_param the solver sets."""
    if override is not None:
        return _existing(str(override), source, "train net"), f"net file: {override}"
    given = [field for field in TRAIN_NET_FIELDS if param.HasField(field)]
    if not given:
        raise SolverConfigError(f"{source}: SolverParameter must specify a train net using one of these "
                                f"fields: {', '.join(TRAIN_NET_FIELDS)}")
    if len(given) > 1:
        raise SolverConfigError(f"{source}: SolverParameter must not contain more than one of these fields "
                                f"specifying a train net: {', '.join(given)}")
    field = given[0]
    if field.endswith("_param"):
        return getattr(param, field), field
    path = getattr(param, field)
    return _existing(path, source, "train net"), f"{field} file: {path}"


def test_net_sources(param, source, generic_override=None):
    """[(path or NetParameter, description)] of the test nets, as Caffe's InitTestNets: every
    test_net_param, every test_net file, then the generic net (net / net_param) once for each
    test_iter left over. `generic_override` replaces the generic net file."""
    generic = [field for field in ("net", "net_param") if param.HasField(field)]
    if len(generic) > 1:
        raise SolverConfigError(f"{source}: both net_param and net may not be specified")
    explicit = len(param.test_net_param) + len(param.test_net)
    if generic and len(param.test_iter) < explicit or not generic and len(param.test_iter) != explicit:
        raise SolverConfigError(f"{source}: test_iter must be specified for each test network "
                                f"({len(param.test_iter)} test_iter for {explicit} test_net/test_net_param)")
    nets = [(net, "test_net_param") for net in param.test_net_param]
    nets += [(_existing(path, source, "test_net"), f"test_net file: {path}") for path in param.test_net]
    for _ in range(len(param.test_iter) - explicit):
        if generic == ["net_param"]:
            nets.append((param.net_param, "net_param"))
        else:
            path = str(generic_override) if generic_override is not None else param.net
            nets.append((_existing(path, source, "net"), f"net file: {path}"))
    if param.test_state and len(param.test_state) != len(nets):
        raise SolverConfigError(f"{source}: test_state must be unspecified or specified once per test net "
                                f"({len(param.test_state)} for {len(nets)} test nets)")
    if nets and param.test_interval <= 0:
        raise SolverConfigError(f"{source}: test_interval must be positive when there are test nets, "
                                f"got {param.test_interval}")
    return nets


def net_state(phase, netparam, extra=None):
    """Caffe's NetState of a solver's net: the phase, then the net's own state, then the solver's
    train_state / test_state (later ones take precedence, stages accumulate)."""
    state = caffe_pb2.NetState(phase=phase)
    state.MergeFrom(netparam.state)
    if extra is not None:
        state.MergeFrom(extra)
    return state


def netparam_of(net_source):
    """The NetParameter of a path or a NetParameter."""
    if isinstance(net_source, caffe_pb2.NetParameter):
        return net_source
    return formats.read_net_prototxt(net_source)


def _existing(path, source, what):
    if not Path(path).is_file():
        raise FileNotFoundError(f"{source}: {what} '{path}' not found (relative to {os.getcwd()})")
    return str(path)
