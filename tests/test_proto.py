"""The committed schema module matches caffe.proto, and caffe.proto matches Caffe.

Field numbers and defaults below are Caffe's (BVLC caffe.proto); the wire-format tests
encode bytes by hand, independently of the generated module, so a wrong field number
in our schema cannot hide behind a symmetric write/read.
"""
import ast
import importlib.util
import struct
import tarfile
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from sec.proto import caffe_pb2
from sec.proto.regenerate import PROTO_DIR, regenerate

GRPC_TOOLS_MISSING = importlib.util.find_spec("grpc_tools") is None
CAFFE_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "caffe" / "caffe-9b89154-src.tar.gz"
CAFFE_PROTO_MEMBER = "caffe-9b89154/src/caffe/proto/caffe.proto"
FLOAT_TYPES = (descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
               descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE)


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _tag(field, wire_type):
    return _varint(field << 3 | wire_type)


def _length_delimited(field, payload):
    return _tag(field, 2) + _varint(len(payload)) + payload


def _serialized_schema(module_text):
    """The FileDescriptorProto bytes a generated *_pb2.py module registers."""
    for node in ast.walk(ast.parse(module_text)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile"):
            return descriptor_pb2.FileDescriptorProto.FromString(node.args[0].value)
    raise AssertionError("no AddSerializedFile call in the generated module")


@pytest.mark.skipif(GRPC_TOOLS_MISSING, reason="grpcio-tools (protoc) is not installed")
def test_committed_module_matches_schema(tmp_path):
    regenerated = regenerate(tmp_path).read_text()
    committed = (PROTO_DIR / "caffe_pb2.py").read_text()
    assert _serialized_schema(regenerated) == _serialized_schema(committed), (
        "sec/proto/caffe_pb2.py is stale: run python -m sec.proto.regenerate")
    # the module carries no protoc or runtime version, so any protoc writes the same text
    assert regenerated == committed


def test_module_has_no_runtime_version_pin():
    """protoc's gencode refuses runtimes older than itself (ValidateProtobufRuntimeVersion);
    the committed module must load on every protobuf from 4.21 (test_schema_loads_on_runtime)."""
    text = (PROTO_DIR / "caffe_pb2.py").read_text()
    assert "runtime_version" not in text and "ValidateProtobufRuntimeVersion" not in text
    imported = {node.module for node in ast.walk(ast.parse(text)) if isinstance(node, ast.ImportFrom)}
    assert imported == {"google.protobuf", "google.protobuf.internal"}


def _field(message, name):
    return message.DESCRIPTOR.fields_by_name[name]


@pytest.mark.parametrize("message, name, number", [
    (caffe_pb2.NetParameter, "name", 1),
    (caffe_pb2.NetParameter, "layers", 2),
    (caffe_pb2.NetParameter, "input", 3),
    (caffe_pb2.NetParameter, "input_dim", 4),
    (caffe_pb2.NetParameter, "input_shape", 8),
    (caffe_pb2.NetParameter, "layer", 100),
    (caffe_pb2.LayerParameter, "blobs", 7),
    (caffe_pb2.LayerParameter, "transform_param", 100),
    (caffe_pb2.LayerParameter, "loss_param", 101),
    (caffe_pb2.LayerParameter, "convolution_param", 106),
    (caffe_pb2.LayerParameter, "image_data_param", 115),
    (caffe_pb2.LayerParameter, "inner_product_param", 117),
    (caffe_pb2.LayerParameter, "pooling_param", 121),
    (caffe_pb2.LayerParameter, "python_param", 130),
    (caffe_pb2.LayerParameter, "input_param", 143),
    (caffe_pb2.BlobProto, "num", 1),
    (caffe_pb2.BlobProto, "width", 4),
    (caffe_pb2.BlobProto, "data", 5),
    (caffe_pb2.BlobProto, "shape", 7),
    (caffe_pb2.BlobProto, "double_data", 8),
    (caffe_pb2.ConvolutionParameter, "dilation", 18),
    (caffe_pb2.V1LayerParameter, "blobs_lr", 7),
    (caffe_pb2.V1LayerParameter, "weight_decay", 8),
    (caffe_pb2.V1LayerParameter, "convolution_param", 10),
    (caffe_pb2.SolverParameter, "base_lr", 5),
    (caffe_pb2.SolverParameter, "lr_policy", 8),
    (caffe_pb2.SolverParameter, "momentum", 11),
    (caffe_pb2.SolverParameter, "weight_decay", 12),
    (caffe_pb2.SolverParameter, "iter_size", 36),
    (caffe_pb2.SolverState, "history", 3),
])
def test_field_numbers_are_caffes(message, name, number):
    assert _field(message, name).number == number


def test_defaults_are_caffes():
    assert caffe_pb2.ConvolutionParameter().bias_term is True
    assert caffe_pb2.ConvolutionParameter().group == 1
    assert caffe_pb2.PoolingParameter().pool == caffe_pb2.PoolingParameter.MAX
    assert caffe_pb2.PoolingParameter().stride == 1
    assert caffe_pb2.ParamSpec().lr_mult == 1.0 and caffe_pb2.ParamSpec().decay_mult == 1.0
    assert caffe_pb2.DropoutParameter().dropout_ratio == 0.5
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    assert (caffe_pb2.TRAIN, caffe_pb2.TEST) == (0, 1)
    solver = caffe_pb2.SolverParameter()
    assert solver.type == "SGD" and solver.iter_size == 1 and solver.average_loss == 1
    assert solver.solver_mode == caffe_pb2.SolverParameter.GPU
    assert solver.regularization_type == "L2" and solver.clip_gradients == -1
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4
    assert caffe_pb2.V1LayerParameter.INNER_PRODUCT == 14
    assert caffe_pb2.V1LayerParameter.SOFTMAX_LOSS == 21


def test_hand_encoded_layer_parses():
    python_param = (_length_delimited(1, b"pylayers") + _length_delimited(2, b"SeedLoss")
                    + _length_delimited(3, b"{}"))
    layer = (_length_delimited(1, b"loss-s") + _length_delimited(2, b"Python")
             + _length_delimited(130, python_param))
    net = caffe_pb2.NetParameter.FromString(_length_delimited(100, layer))
    parsed = net.layer[0]
    assert (parsed.name, parsed.type) == ("loss-s", "Python")
    assert (parsed.python_param.module, parsed.python_param.layer) == ("pylayers", "SeedLoss")
    assert parsed.python_param.param_str == "{}"


def test_blob_serialises_as_caffe_does():
    values = [1.5, -2.0, 0.25]
    blob = caffe_pb2.BlobProto(data=values)
    blob.shape.dim.extend([3])
    packed = struct.pack("<3f", *values)
    shape = _length_delimited(1, _varint(3))  # dim is packed: one varint in a length field
    expected = _length_delimited(5, packed) + _length_delimited(7, shape)
    assert blob.SerializeToString(deterministic=True) == expected


def _schema_facts(file_proto):
    """{"Message.field": (number, label, type, type name, default, packed)} and
    {"Enum.VALUE": number} of a FileDescriptorProto, nested types included."""
    facts = {}

    def enums(enum_types, prefix):
        for enum in enum_types:
            for value in enum.value:
                facts[f"{prefix}{enum.name}.{value.name}"] = value.number

    def messages(message_types, prefix):
        for message in message_types:
            name = prefix + message.name
            facts[name] = "message"
            for field in message.field:
                default = field.default_value if field.HasField("default_value") else None
                if default is not None and field.type in FLOAT_TYPES:
                    # The runtime prints float defaults with float32 digits ("0.999000013").
                    default = struct.unpack("<f", struct.pack("<f", float(default)))[0]
                facts[f"{name}.{field.name}"] = (
                    field.number, field.label, field.type, field.type_name.split(".")[-1],
                    default, field.options.packed)
            enums(message.enum_type, name + ".")
            messages(message.nested_type, name + ".")

    messages(file_proto.message_type, "")
    enums(file_proto.enum_type, "")
    return facts


@pytest.mark.skipif(GRPC_TOOLS_MISSING, reason="grpcio-tools (protoc) is not installed")
@pytest.mark.skipif(not CAFFE_SOURCE.is_file(), reason=f"Caffe source not found at {CAFFE_SOURCE}")
def test_schema_is_caffes_whole_schema(tmp_path):
    """Every message, field (number, label, type, default, packing) and enum value of BVLC
    Caffe's caffe.proto is in ours, and ours has nothing Caffe lacks."""
    from grpc_tools import protoc

    with tarfile.open(CAFFE_SOURCE) as tar:
        (tmp_path / "caffe.proto").write_bytes(tar.extractfile(CAFFE_PROTO_MEMBER).read())
    descriptor_set = tmp_path / "caffe.desc"
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--descriptor_set_out={descriptor_set}",
                        str(tmp_path / "caffe.proto")]) == 0
    theirs = _schema_facts(descriptor_pb2.FileDescriptorSet.FromString(
        descriptor_set.read_bytes()).file[0])
    ours_proto = descriptor_pb2.FileDescriptorProto()
    caffe_pb2.DESCRIPTOR.CopyToProto(ours_proto)
    ours = _schema_facts(ours_proto)
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    different = sorted(key for key in set(theirs) & set(ours) if theirs[key] != ours[key])
    assert (missing, extra, different) == ([], [], []), (
        f"missing {missing}, not in Caffe {extra}, different {different}")
    assert len(theirs) > 500  # the comparison saw the whole schema, not an empty file


@pytest.mark.parametrize("message, name, number, default", [
    (caffe_pb2.PoolingParameter, "round_mode", 13, caffe_pb2.PoolingParameter.CEIL),
    (caffe_pb2.LayerParameter, "prelu_param", 131, None),
    (caffe_pb2.LayerParameter, "clip_param", 148, None),
    (caffe_pb2.SolverParameter, "weights", 42, None),
    (caffe_pb2.V1LayerParameter, "layer", 1, None),
    (caffe_pb2.WindowDataParameter, "crop_mode", 11, "warp"),
    (caffe_pb2.Datum, "encoded", 7, False),
])
def test_fields_beyond_the_engine_are_in_the_schema(message, name, number, default):
    field = _field(message, name)
    assert field.number == number
    if default is not None:
        assert field.default_value == default
