"""The CRF layer of a train net with out-of-range param_str values (issue 19): the error names the
prototxt, the layer and the parameter, at build time, for every value that cannot run."""
import importlib.util

import pytest

from pylayers import crf
from sec import caffe

PROTOTXT = """name: "crf"
layer {{ name: "in" type: "Input" top: "scores" top: "images"
        input_param {{ shape {{ dim: 1 dim: 3 dim: 5 dim: 5 }} shape {{ dim: 1 dim: 3 dim: 9 dim: 9 }} }} }}
layer {{ name: "crf" type: "Python" bottom: "scores" bottom: "images" top: "q"
        python_param {{ module: "pylayers" layer: "CRFLayer" param_str: "{param_str}" }} }}
"""
needs_crf = pytest.mark.skipif(importlib.util.find_spec("krahenbuhl2013") is None,
                               reason="krahenbuhl2013 (./CRF) is not installed: pip install ./CRF")


def build(tmp_path, param_str):
    path = tmp_path / "crf.prototxt"
    path.write_text(PROTOTXT.format(param_str=param_str))
    return caffe.Net(str(path), caffe.TEST)


@needs_crf
@pytest.mark.parametrize("param_str, named", [
    ("{maxiter: .inf}", "param_str maxiter must be a non-negative integer, at most 1000"),
    ("{maxiter: .nan}", "param_str maxiter must be"), ("{maxiter: 1000000000}", "param_str maxiter must be"),
    ("{maxiter: -1}", "param_str maxiter must be"), ("{scale_factor: .inf}", "param_str scale_factor must be > 0"),
    ("{min_prob: .nan}", "param_str min_prob must be in [0, 1)"),
    ("{mean: [.nan, 117, 123]}", "param_str mean needs 3 finite numbers"), ("{mean: [1, 2]}", "mean needs 3")])
def test_out_of_range_crf_parameters_are_named_at_build_time(tmp_path, param_str, named):
    with pytest.raises(caffe.NetError) as info:
        build(tmp_path, param_str)
    message = str(info.value)
    assert "crf.prototxt" in message and "layer 'crf'" in message and named in message, message


@needs_crf
def test_the_iteration_cap_is_the_dense_crfs(tmp_path):
    import krahenbuhl2013
    assert crf.MAX_ITERATIONS == krahenbuhl2013.MAX_ITERATIONS
    build(tmp_path, f"{{maxiter: {crf.MAX_ITERATIONS}}}")
