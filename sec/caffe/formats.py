"""Caffe's file formats: prototxt nets and solvers, .caffemodel weights, .solverstate.

Everything goes through the schema in `sec/proto/caffe.proto` (Caffe's field numbers),
so files written by Caffe read here and files written here load in Caffe.

- Text files (prototxt) are parsed with protobuf's text format; a syntax error or an
  unknown field raises `PrototxtError` naming the file, line, column and the token.
- Legacy nets (V0: `layers { layer { type: "conv" ... } }`, V1: `layers { type: CONVOLUTION
  blobs_lr: 1 ... }`) are upgraded into the current `layer` form as Caffe's `UpgradeNetAsNeeded`
  does (sec.caffe.upgrade_proto), for prototxt and for binary .caffemodel alike.
- Arrays are float32 numpy arrays in Caffe's layout (convolution weights
  out x in x kh x kw, inner product weights out x in, biases (out,)).
- Writers are atomic: a temporary file in the target folder, fsync, then os.replace,
  so an interrupted write never leaves a truncated snapshot behind.
"""
import io
import math
import os
import re
import secrets
import warnings
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from sec.caffe import upgrade_proto
from sec.proto import caffe_pb2

LEGACY_AXES = 4            # num, channels, height, width
LEGACY_FIELDS = ("num", "channels", "height", "width")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
UTF8_BOM = "\ufeff"
TEXT_INDENT = 2
FLT_DIGITS, DBL_DIGITS = 6, 15      # C++ FLT_DIG, DBL_DIG


class PrototxtError(ValueError):
    """A prototxt that does not parse or does not describe a valid net/solver."""


class PrototxtWarning(UserWarning):
    """A prototxt that reads here but that BVLC Caffe would refuse."""


class CaffeFormatError(ValueError):
    """A binary file (.caffemodel, .solverstate) or blob that is not what it claims."""


class WeightShapeError(ValueError):
    """Stored weights whose number or shape does not match the net."""


# ---------------------------------------------------------------- text (prototxt)

def _parse_text(text, message, source):
    if text.startswith(UTF8_BOM):
        # Editors on Windows add it; protobuf's (and Caffe's) text parser chokes on it.
        warnings.warn(f"{source}: skipped the UTF-8 byte-order mark at the start of the file; "
                      "BVLC Caffe refuses such a prototxt, so save it without one to use it "
                      "there", PrototxtWarning, stacklevel=3)
        text = text[len(UTF8_BOM):]
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        line, column = error.GetLine(), error.GetColumn()
        detail = re.sub(r"^\d+:\d+ : ", "", str(error))
        if line is None:
            raise PrototxtError(f"{source}: {detail}") from None
        lines = text.splitlines()
        shown = lines[line - 1] if 0 < line <= len(lines) else ""
        raise PrototxtError(f"{source}, line {line}, column {column}: {detail}\n"
                            f"    {shown.strip()}") from None
    return message


def _read_text(path):
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"prototxt not found: {path}") from None
    except UnicodeDecodeError as error:
        raise PrototxtError(f"{path}: not a text prototxt ({error})") from None


def parse_net_text(text, source="<string>"):
    """NetParameter from prototxt text; V1 `layers` are upgraded into `layer`."""
    net = _parse_text(text, caffe_pb2.NetParameter(), source)
    return upgrade_net(net, source)


def read_net_prototxt(path):
    """NetParameter from a prototxt file; V1 `layers` are upgraded into `layer`."""
    return parse_net_text(_read_text(path), source=str(path))


def read_solver_prototxt(path):
    """SolverParameter from a prototxt file. Paths inside (net, snapshot_prefix) are
    returned as written; the legacy `solver_type` enum is upgraded into `type`."""
    solver = _parse_text(_read_text(path), caffe_pb2.SolverParameter(), str(path))
    try:
        upgrade_proto.upgrade_solver_as_needed(solver, str(path))
    except upgrade_proto.UpgradeError as error:
        raise PrototxtError(str(error)) from None
    return solver


def message_to_text(message, indent=0):
    """A protobuf message as C++'s TextFormat::Print writes it (what Caffe's WriteProtoToTextFile
    writes): fields by number, two-space indents, and floats as C++ prints them (`%.6g`, or `%.9g`
    when that does not read back; doubles `%.15g` / `%.17g`), so `1` where Python's printer
    writes `1.0`. Other values as protobuf's Python printer writes them (the same escapes)."""
    pad = " " * indent
    lines = []
    for field, value in message.ListFields():
        for item in (value if field.is_repeated else [value]):
            if field.cpp_type == field.CPPTYPE_MESSAGE:
                lines.append(f"{pad}{field.name} {{\n{message_to_text(item, indent + TEXT_INDENT)}{pad}}}\n")
            elif field.cpp_type in (field.CPPTYPE_FLOAT, field.CPPTYPE_DOUBLE):
                lines.append(f"{pad}{field.name}: {_cpp_float_text(item, field.cpp_type == field.CPPTYPE_FLOAT)}\n")
            else:
                out = io.StringIO()
                text_format.PrintFieldValue(field, item, out)
                lines.append(f"{pad}{field.name}: {out.getvalue()}\n")
    return "".join(lines)


def _cpp_float_text(value, single):
    """protobuf's SimpleFtoa (single) / SimpleDtoa: the short form when it reads back exactly."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    short, full = (FLT_DIGITS, FLT_DIGITS + 3) if single else (DBL_DIGITS, DBL_DIGITS + 2)
    text = f"{value:.{short}g}"
    exact = np.float32(float(text)) == np.float32(value) if single else float(text) == value
    return text if exact else f"{value:.{full}g}"


def net_inputs(netparam, source="<net>"):
    """[(name, shape tuple)] of the net-level inputs (`input` + `input_shape`, or
    `input` + four `input_dim` values per input). Input *layers* are not included."""
    names = list(netparam.input)
    shapes, dims = netparam.input_shape, list(netparam.input_dim)
    if shapes and dims:
        raise PrototxtError(f"{source}: give the input shapes as 'input_shape' or as "
                            "'input_dim', not both")
    if shapes:
        if len(shapes) != len(names):
            raise PrototxtError(f"{source}: {len(names)} 'input' names but "
                                f"{len(shapes)} 'input_shape' entries")
        return [(name, tuple(shape.dim)) for name, shape in zip(names, shapes)]
    if len(dims) != LEGACY_AXES * len(names):
        raise PrototxtError(f"{source}: {len(names)} 'input' names need "
                            f"{LEGACY_AXES * len(names)} 'input_dim' values, got {len(dims)}")
    return [(name, tuple(dims[LEGACY_AXES * i:LEGACY_AXES * (i + 1)]))
            for i, name in enumerate(names)]


# ---------------------------------------------------------------- legacy nets

def upgrade_net(net, source="<net>"):
    """Upgrade a V0 or V1 NetParameter (`layers`) into the current form (`layer`), in place.

    Caffe's UpgradeNetAsNeeded but for the input step (sec.caffe.upgrade_proto): V0 layers (padding
    layers folded, V0 fields into their parameter messages), legacy data-layer transform fields
    into transform_param, V1 type enums into Caffe's type strings, blobs_lr / weight_decay into
    param lr_mult / decay_mult, BatchNorm's three legacy param specs to lr_mult and decay_mult 0.
    Legacy input fields stay (the Net reads them). A V0 field Caffe would drop with an error, or a
    net Caffe refuses to upgrade, raises PrototxtError.
    """
    try:
        problems = upgrade_proto.upgrade_net_as_needed(net, source, inputs=False)
    except upgrade_proto.UpgradeError as error:
        raise PrototxtError(str(error)) from None
    if problems:
        raise PrototxtError(f"{problems[0]} (Caffe drops it with an error; upgrade the file with "
                            "upgrade_net_proto_text / upgrade_net_proto_binary and fix it)")
    return net


# ---------------------------------------------------------------- blobs

def blob_shape(blob):
    """Shape stored in a BlobProto: the legacy 4-D (num, channels, height, width) when
    any of those is set (Caffe's Blob::FromProto gives them precedence), else `shape`."""
    if any(blob.HasField(name) for name in LEGACY_FIELDS):
        return tuple(getattr(blob, name) for name in LEGACY_FIELDS)
    return tuple(blob.shape.dim)


def blob_to_array(blob):
    """float32 array of a BlobProto's values (double_data when present) in its stored
    shape; raises CaffeFormatError when the value count does not fit the shape."""
    shape = blob_shape(blob)
    if any(d < 0 for d in shape):
        raise CaffeFormatError(f"blob shape {shape} has a negative dimension")
    values = blob.double_data if len(blob.double_data) else blob.data
    count = math.prod(shape)  # exact: np.prod wraps around for huge dimensions
    if len(values) != count:
        raise CaffeFormatError(f"blob of shape {shape} holds {len(values)} values, "
                               f"needs {count}")
    try:
        return np.array(values, dtype=np.float32).reshape(shape)
    except ValueError as error:  # an empty blob with dimensions numpy cannot address
        raise CaffeFormatError(f"blob of shape {shape}: {error}") from None


def array_to_blob(array):
    """BlobProto in the current form (`shape` + float `data`) from an array-like
    (numpy array or a CPU/GPU torch tensor)."""
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().cpu().numpy()
    array = np.asarray(array, dtype=np.float32)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(array.shape)
    blob.data.extend(array.ravel().tolist())
    return blob


def shape_matches(expected, blob):
    """Caffe's Blob::ShapeEquals: a blob stored with legacy num/channels/height/width
    matches a target of at most 4 axes whose shape, left-padded with 1s to 4 axes,
    equals (num, channels, height, width); otherwise the shapes must be equal."""
    expected = tuple(int(d) for d in expected)
    found = blob_shape(blob)
    if any(blob.HasField(name) for name in LEGACY_FIELDS):
        if len(expected) > LEGACY_AXES:
            return False
        padded = (1,) * (LEGACY_AXES - len(expected)) + expected
        return padded == found
    return expected == found


def match_weights(netparam, expected, source):
    """Weights of `netparam` for the layers named in `expected`, copied by name.

    expected: {layer name: [shape of each parameter blob]} of the target net.
    Returns {layer name: [float32 array in the expected shape]} for the layers the file
    has; layers the target net does not have are ignored (as Caffe does). A different
    blob count or shape raises WeightShapeError naming source, layer and shapes.
    """
    weights = {}
    for layer in netparam.layer:
        if layer.name not in expected:
            continue
        shapes = [tuple(int(d) for d in s) for s in expected[layer.name]]
        if len(layer.blobs) != len(shapes):
            found = [blob_shape(blob) for blob in layer.blobs]
            raise WeightShapeError(
                f"{source}: layer '{layer.name}' stores {len(layer.blobs)} blobs, the net "
                f"expects {len(shapes)}: expected shapes {shapes}, found {found}")
        arrays = []
        for index, (shape, blob) in enumerate(zip(shapes, layer.blobs)):
            if not shape_matches(shape, blob):
                raise WeightShapeError(
                    f"{source}: layer '{layer.name}' blob {index}: expected shape "
                    f"{shape}, found {blob_shape(blob)}")
            try:
                arrays.append(blob_to_array(blob).reshape(shape))
            except CaffeFormatError as error:
                raise CaffeFormatError(
                    f"{source}: layer '{layer.name}' blob {index}: {error}") from None
        weights[layer.name] = arrays
    return weights


# ---------------------------------------------------------------- binary files

def _read_binary(path, message, kind):
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{kind} not found: {path}") from None
    if data.startswith(HDF5_MAGIC):
        raise CaffeFormatError(f"{path}: HDF5 {kind} files are not supported; "
                               "save it in Caffe's binary protobuf format")
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        raise CaffeFormatError(f"{path}: not a binary {kind} ({error})") from None
    return message


def read_caffemodel(path):
    """NetParameter from a binary .caffemodel (current or legacy V1 layout, the latter
    upgraded into `layer`)."""
    net = _read_binary(path, caffe_pb2.NetParameter(), "caffemodel")
    if not net.layer and not net.layers:
        raise CaffeFormatError(f"{path}: not a caffemodel (no layers found)")
    try:
        return upgrade_net(net, str(path))
    except PrototxtError as error:  # same checks as for text nets, reported as a binary file
        raise CaffeFormatError(str(error)) from None


def write_caffemodel(path, net_name, layers):
    """Write a .caffemodel: layers is [(layer name, layer type, [arrays])] in net order.

    Only names, types and blobs are stored (all Caffe's copy-by-name loader reads).
    """
    net = caffe_pb2.NetParameter(name=net_name)
    for name, layer_type, arrays in layers:
        layer = net.layer.add(name=name, type=layer_type)
        layer.blobs.extend(array_to_blob(array) for array in arrays)
    atomic_write_bytes(path, net.SerializeToString())


def read_solverstate(path):
    """dict(iter, learned_net, history=[float32 arrays], current_step) of a .solverstate."""
    state = _read_binary(path, caffe_pb2.SolverState(), "solverstate")
    history = []
    for index, blob in enumerate(state.history):
        try:
            history.append(blob_to_array(blob))
        except CaffeFormatError as error:
            raise CaffeFormatError(f"{path}: history blob {index}: {error}") from None
    return dict(iter=state.iter, learned_net=state.learned_net, history=history,
                current_step=state.current_step)


def write_solverstate(path, iter, learned_net, history, current_step=0):
    """Write a .solverstate (SGD: one momentum array per learnable parameter)."""
    state = caffe_pb2.SolverState(iter=iter, learned_net=str(learned_net),
                                  current_step=current_step)
    state.history.extend(array_to_blob(array) for array in history)
    atomic_write_bytes(path, state.SerializeToString())


def atomic_write_bytes(path, data):
    """Write `data` to `path` so that readers see the old file or the whole new one.

    The bytes go to a temporary file in the same folder, are fsynced, then renamed over
    `path` with os.replace; on any failure the temporary file is removed and `path` is
    left untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder):
    # Makes the rename itself durable; folders cannot be opened this way on Windows.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
