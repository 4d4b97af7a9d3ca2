"""The upgrade tools and V0 nets against BVLC Caffe's own upgrade tools.

tests/fixtures/caffe/tools_upgrade.json holds, per legacy definition, what Caffe's
upgrade_net_proto_text / _binary / upgrade_solver_proto_text wrote, their exit status and log
messages (bench/caffe_tools_reference.py, run with the real binaries). Our tools must write the
same bytes, exit the same way and log the same messages.
"""
import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sec import caffe
from sec.caffe import formats, upgrade_proto
from sec.caffe.tools import glog, upgrade

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "caffe" / "tools_upgrade.json"
CASES = json.loads(FIXTURES.read_text())
GLOG_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] (.*)$")
ABORTED = -6          # Caffe's LOG(FATAL) as subprocess sees it; our tools exit glog.FATAL_EXIT_STATUS


def run_tool(tool, args, capsys):
    status = upgrade.run(tool, [str(a) for a in args])
    err = capsys.readouterr().err
    lines = [GLOG_LINE.match(line) for line in err.splitlines()]
    assert all(lines), err        # every line is a glog line
    return status, [(m.group(1), m.group(2)) for m in lines]


@pytest.mark.parametrize("name", sorted(CASES))
def test_upgrade_tools_write_what_caffe_writes(name, tmp_path, capsys):
    case = CASES[name]
    source, target = tmp_path / "in", tmp_path / "out"
    source.write_bytes(base64.b64decode(case["input"]) if case["binary"] else case["input"].encode())
    status, lines = run_tool(case["tool"], [source, target], capsys)
    messages = [text.replace(str(source), "@IN@").replace(str(target), "@OUT@") for level, text in lines
                if level != "F"]
    assert messages == case["messages"]
    if case["status"] == ABORTED:
        assert status == glog.FATAL_EXIT_STATUS
        assert [level for level, _ in lines].count("F") == 1
        assert not target.exists() and list(tmp_path.iterdir()) == [source]   # nothing half-written
        return
    assert status == case["status"]
    written = target.read_bytes()
    expected = base64.b64decode(case["output"]) if case["binary"] else case["output"].encode()
    assert written == expected


def test_usage_missing_input_and_unwritable_output(tmp_path, capsys):
    status, lines = run_tool("upgrade_net_proto_text", [tmp_path / "only-one"], capsys)
    assert status == 1
    assert lines == [("E", "Usage: upgrade_net_proto_text v0_net_proto_file_in net_proto_file_out")]
    status, lines = run_tool("upgrade_solver_proto_text", [tmp_path / "absent.prototxt", tmp_path / "o"], capsys)
    assert status == upgrade.FILE_STATUS and len(lines) == 1
    assert lines[0][0] == "E" and "absent.prototxt" in lines[0][1] and "No such file" in lines[0][1]
    assert not (tmp_path / "o").exists()
    source = tmp_path / "net.prototxt"
    source.write_text(CASES["v1_net"]["input"])
    status, lines = run_tool("upgrade_net_proto_text", [source, tmp_path / "no" / "dir" / "out"], capsys)
    assert status == upgrade.FILE_STATUS
    assert lines[-1][0] == "E" and "no/dir/out" in lines[-1][1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.prototxt"]


def test_unparsable_inputs_exit_2_naming_file_and_line(tmp_path, capsys):
    source = tmp_path / "bad.prototxt"
    source.write_text('name: "x"\nlayer { nme: "y" }\n')
    status, lines = run_tool("upgrade_net_proto_text", [source, tmp_path / "out"], capsys)
    assert status == 2 and len(lines) == 1
    assert lines[0][1].startswith(f"Failed to parse input text file as NetParameter: {source} (2:")
    assert "nme" in lines[0][1]
    status, lines = run_tool("upgrade_net_proto_binary", [source, tmp_path / "out"], capsys)
    assert status == 2 and "Failed to parse input binary file as NetParameter" in lines[0][1]
    assert not (tmp_path / "out").exists()


def test_message_to_text_prints_floats_as_cpp():
    from sec.proto import caffe_pb2
    solver = caffe_pb2.SolverParameter(base_lr=1.0, momentum=0.9, delta=1e-8, weight_decay=1.1234567,
                                       gamma=123456789.0, power=float("inf"))
    text = formats.message_to_text(solver)
    # %.6g when it reads back as the same float, else %.9g (protobuf's SimpleFtoa)
    assert "base_lr: 1\n" in text and "momentum: 0.9\n" in text and "delta: 1e-08\n" in text
    assert "weight_decay: 1.12345672\n" in text and "gamma: 123456792\n" in text and "power: inf\n" in text


V0_SMALL = """name: "v0small"
input: "data" input_dim: 2 input_dim: 3 input_dim: 9 input_dim: 9
layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2
  weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.25 } } bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 1 } bottom: "conv1" top: "pool1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 3 weight_filler { type: "xavier" } } bottom: "pool1" top: "fc" }
"""
CURRENT_SMALL = """name: "v0small"
input: "data" input_dim: 2 input_dim: 3 input_dim: 9 input_dim: 9
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: AVE kernel_size: 2 stride: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 3 } }
"""


def test_v0_net_builds_and_computes_as_its_current_form(tmp_path):
    """A V0 prototxt (padding layer folded into the convolution) runs in the engine exactly as the
    same net written today, with the same weights."""
    v0, current = tmp_path / "v0.prototxt", tmp_path / "current.prototxt"
    v0.write_text(V0_SMALL)
    current.write_text(CURRENT_SMALL)
    torch.manual_seed(0)
    old = caffe.Net(str(v0), caffe.TEST)
    assert [name for name in old.layer_names if name != "input"] == ["conv1", "relu1", "pool1", "fc"]
    weights = tmp_path / "w.caffemodel"
    old.save(str(weights))
    new = caffe.Net(str(current), str(weights), caffe.TEST)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(old.forward(data=x)["fc"], new.forward(data=x)["fc"])
    assert float(np.abs(old.params["conv1"][1].data - 0.25).max()) == 0     # the V0 bias filler was kept


def test_v0_problem_and_refusal_are_errors_when_building_a_net(tmp_path):
    path = tmp_path / "v0.prototxt"
    path.write_text(CASES["v0_misplaced_fields"]["input"])
    with pytest.raises(formats.PrototxtError,
                       match=r"v0.prototxt: layer 'r': Unknown parameter num_output for layer type relu"):
        caffe.Net(str(path), caffe.TEST)
    path.write_text(CASES["v0_padding_into_relu"]["input"])
    with pytest.raises(formats.PrototxtError, match="padding layer input to non-convolutional"):
        formats.read_net_prototxt(path)


def test_needs_upgrade_and_solver_type_upgrade():
    from sec.proto import caffe_pb2
    assert not upgrade_proto.net_needs_upgrade(formats.parse_net_text(CASES["already_current"]["input"]))
    legacy_input = caffe_pb2.NetParameter(input=["x"], input_dim=[1, 2, 3, 4])
    assert upgrade_proto.net_needs_upgrade(legacy_input)
    solver = caffe_pb2.SolverParameter(solver_type=caffe_pb2.SolverParameter.RMSPROP)
    assert upgrade_proto.upgrade_solver_as_needed(solver, "s") and solver.type == "RMSProp"
    assert not upgrade_proto.upgrade_solver_as_needed(solver, "s")
