"""The `caffe` command: gflags syntax and errors, exit statuses, `test`, `time`, `device_query`,
and how the installed command coexists with a real Caffe binary (sec/caffe/tools/caffe.py)."""
import os
import stat

import numpy as np
import pytest
import torch

from caffe_tools_helpers import GLOG_LINE, messages, read_weights, write_tiny_classifier
from sec import caffe
from sec.caffe.tools import caffe as caffe_tool
from sec.caffe.tools import glog
from sec.caffe.tools.flags import FlagError

FATAL = glog.FATAL_EXIT_STATUS


def run_main(argv, capsys):
    status = caffe_tool.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------- flags and usage

@pytest.mark.parametrize("argv", [
    ["train", "--solver=s.prototxt"], ["train", "--solver", "s.prototxt"], ["-solver", "s.prototxt", "train"],
    ["train", "-solver=s.prototxt"], ["--solver", "s.prototxt", "train", "--iterations", "0x10"],
])
def test_gflags_spellings(argv):
    values, positional = caffe_tool.FLAG_SET.parse(argv)
    assert positional == ["train"] and values["solver"] == "s.prototxt"
    assert values["iterations"] == (16 if "0x10" in argv else 50)
    assert (values["sigint_effect"], values["sighup_effect"], values["level"]) == ("stop", "snapshot", 0)


def test_double_dash_ends_flags():
    values, positional = caffe_tool.FLAG_SET.parse(["train", "--", "--solver", "x"])
    assert positional == ["train", "--solver", "x"] and values["solver"] == ""


@pytest.mark.parametrize("argv, message", [
    (["train", "--foo"], "unknown command line flag 'foo'"),
    (["train", "--foo=3"], "unknown command line flag 'foo'"),
    (["test", "--iterations", "abc"], "illegal value 'abc' specified for int32 flag 'iterations'"),
    (["time", "--level=1.5"], "illegal value '1.5' specified for int32 flag 'level'"),
    (["time", "--level=99999999999"], "illegal value '99999999999' specified for int32 flag 'level'"),
    (["train", "--solver"], "flag '--solver' is missing its argument; flag description: The solver definition "
                            "protocol buffer text file."),
    (["--nosolver", "train"], "boolean value (nosolver) specified for string command line flag"),
])
def test_flag_errors_are_gflags_lines_with_status_1(argv, message, capsys):
    with pytest.raises(FlagError, match=None):
        caffe_tool.FLAG_SET.parse(argv)
    status, out, err = run_main(argv, capsys)
    assert (status, out, err) == (1, "", f"ERROR: {message}\n")


def test_usage_help_and_version(capsys):
    status, out, err = run_main([], capsys)
    assert status == 0 and err == ""
    assert out.startswith("caffe: command line brew\nusage: caffe <command> <args>\n\ncommands:\n  train ")
    # gflags' layout, as BVLC Caffe's binary prints it (tests/test_caffe_tools_live.py compares it all)
    assert ("    -snapshot (Optional; the snapshot solver state to resume training.)\n"
            '      type: string default: ""\n') in out
    assert ("    -gpu (Optional; run in GPU mode on given device IDs separated by ','.Use\n"
            "      '-gpu all' to run on all available GPUs. The effective training batch\n"
            '      size is multiplied by the number of devices.) type: string default: ""\n') in out
    assert 'type: string default: "stop"' in out and "-iterations (The number of iterations to run.) type: int32" \
        in out
    assert run_main(["train", "test"], capsys)[:2] == (0, out)      # two commands: usage, as Caffe
    assert run_main(["--noversion"], capsys)[:2] == (0, out)
    status, help_out, _ = run_main(["--help"], capsys)
    assert status == 1 and help_out == out
    assert run_main(["--version"], capsys)[:2] == (0, "caffe version 1.0.0\n")


def test_unknown_command_lists_the_commands_and_aborts(capsys):
    status, out, err = run_main(["brew"], capsys)
    assert status == FATAL and out == ""
    assert messages(err) == [("E", "Available caffe actions:"), ("E", "\tdevice_query"), ("E", "\ttest"),
                             ("E", "\ttime"), ("E", "\ttrain"), ("F", "Unknown action: brew")]


@pytest.mark.parametrize("argv, message", [
    (["train"], "Check failed: FLAGS_solver.size() > 0 (0 vs. 0) Need a solver definition to train."),
    (["train", "--solver", "s", "--snapshot", "a", "--weights", "b"],
     "Check failed: !FLAGS_snapshot.size() || !FLAGS_weights.size() Give a snapshot to resume training or weights "
     "to finetune but not both."),
    (["test", "--weights", "w"], "Check failed: FLAGS_model.size() > 0 (0 vs. 0) Need a model definition to score."),
    (["test", "--model", "m"], "Check failed: FLAGS_weights.size() > 0 (0 vs. 0) Need model weights to score."),
    (["time"], "Check failed: FLAGS_model.size() > 0 (0 vs. 0) Need a model definition to time."),
])
def test_missing_flags_fail_caffes_checks(argv, message, capsys):
    status, _, err = run_main(argv, capsys)
    assert status == FATAL and messages(err) == [("F", message)]


def test_missing_and_bad_files_are_one_line_naming_them(tmp_path, capsys):
    paths = write_tiny_classifier(tmp_path)
    status, _, err = run_main(["train", "--solver", tmp_path / "absent.prototxt"], capsys)
    assert status == FATAL and messages(err, "F") == [("F", f"prototxt not found: {tmp_path}/absent.prototxt")]
    status, _, err = run_main(["test", "--model", paths["net"], "--weights", tmp_path / "no.caffemodel"], capsys)
    assert status == FATAL
    (fatal,) = [m for _, m in messages(err, "F")]
    assert f"{tmp_path}/no.caffemodel" in fatal and "not found" in fatal
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer { name: "a" typo: 1 }\n')
    status, _, err = run_main(["time", "--model", bad], capsys)
    fatal = messages(err, "F")
    assert status == FATAL and len(fatal) == 1 and fatal[0][1].startswith(f"{bad}, line 2, column")
    status, _, err = run_main(["train", "--solver", paths["solver"], "--sigint_effect", "bogus"], capsys)
    assert status == FATAL and messages(err, "F") == [("F", 'Invalid signal effect "bogus" was specified')]
    status, _, err = run_main(["time", "--model", paths["net"], "--phase", "VAL"], capsys)
    assert status == FATAL and messages(err, "F") == [("F", 'phase must be "TRAIN" or "TEST"')]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpus_without_cuda_are_refused_by_name(tmp_path, capsys):
    status, _, err = run_main(["device_query"], capsys)
    assert status == 0 and messages(err) == [("I", "Querying GPUs ")]
    status, _, err = run_main(["device_query", "--gpu", "0"], capsys)
    assert status == FATAL and messages(err)[-1][1].startswith("Cannot use GPU 0: torch sees 0 CUDA device(s)")
    paths = write_tiny_classifier(tmp_path)
    status, _, err = run_main(["test", "--model", paths["net"], "--weights", "w", "--gpu", "1,x"], capsys)
    assert status == FATAL and messages(err, "F") == [
        ("F", "--gpu: 'x' is not a device id (give ids separated by ',', or 'all')")]
    assert caffe_tool.get_gpus("all") == []
    paths["solver"].write_text(paths["solver"].read_text().replace("solver_mode: CPU", "solver_mode: GPU"))
    status, _, err = run_main(["train", "--solver", paths["solver"]], capsys)
    assert status == FATAL and messages(err, "F")[0][1].endswith(
        f"asked by solver_mode: GPU in {paths['solver']} (set solver_mode: CPU to train on the CPU)")


# ---------------------------------------------------------------- test and time

def test_caffe_test_prints_each_batch_and_the_float32_means(tmp_path, capsys):
    paths = write_tiny_classifier(tmp_path, images=4, batch=2, loss_weight=2)
    torch.manual_seed(1)
    net = caffe.Net(str(paths["net"]), caffe.TEST)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    status, _, err = run_main(["test", "--model", paths["net"], "--weights", weights, "--iterations", 3], capsys)
    assert status == 0
    # the same three batches (images 0-1, 2-3, 0-1) through pycaffe's forward
    reference = caffe.Net(str(paths["net"]), str(weights), caffe.TEST)
    expected, sums, loss = [], {}, np.float32(0)
    for i in range(3):
        out = reference.forward()
        for name in ("accuracy", "loss"):
            value = np.float32(out[name].reshape(-1)[0])
            expected.append(("I", f"Batch {i}, {name} = {float(value):g}"))
            sums[name] = sums.get(name, np.float32(0)) + value
        loss += np.float32(2) * np.float32(out["loss"].reshape(-1)[0])
    expected.append(("I", f"Loss: {float(loss / np.float32(3)):g}"))
    mean_loss = sums["loss"] / np.float32(3)
    expected.append(("I", f"accuracy = {float(sums['accuracy'] / np.float32(3)):g}"))
    expected.append(("I", f"loss = {float(mean_loss):g} (* 2 = {float(np.float32(2) * mean_loss):g} loss)"))
    got = messages(err, "I")
    assert got[0] == ("I", "Use CPU.") and ("I", "Running for 3 iterations.") in got
    assert got[-len(expected):] == expected
    assert expected[0] != expected[4]          # batches 0 and 1 differ: the data layer moved on


def test_caffe_time_lists_every_layer_forward_and_backward(tmp_path, capsys):
    paths = write_tiny_classifier(tmp_path)
    status, _, err = run_main(["time", "--model", paths["net"], "--iterations", 2, "--phase", "TEST"], capsys)
    assert status == 0
    got = [m for _, m in messages(err, "I")]
    start = got.index("*** Benchmark begins ***")
    assert got[:2] == ["Use CPU.", "Performing Forward"] and got[start + 1] == "Testing for 2 iterations."
    assert [m.split(" forward-backward")[0] for m in got[start + 2:start + 4]] == ["Iteration: 1", "Iteration: 2"]
    assert got[start + 4] == "Average time per layer: "
    per_layer = got[start + 5:start + 5 + 2 * 4]
    names = ["data", "ip", "loss", "accuracy"]          # stage "extra" is off; TEST phase
    assert [line.split("\t")[0] for line in per_layer] == [f"{n:>10}" for n in names for _ in range(2)]
    assert all(line.split("\t")[1].split(":")[0] == kind for line, kind in zip(per_layer, ["forward", "backward"] * 4))
    assert all(float(line.split(": ")[1].split(" ")[0]) >= 0 for line in per_layer)
    assert got[-5].startswith("Average Forward pass: ") and got[-1] == "*** Benchmark ends ***"
    assert any(m.startswith("Initial loss: ") for m in got)


def test_caffe_time_backward_layer_by_layer_is_the_nets_gradient(tmp_path):
    """`caffe time` runs each layer's backward alone (its part of the autograd graph, fed its
    tops' gradients): chained over the layers, the parameters get the whole net's gradient,
    loss weight included."""
    from sec.caffe.tools import layer_timer
    paths = write_tiny_classifier(tmp_path, loss_weight=2)
    net = caffe.Net(str(paths["net"]), caffe.TRAIN)
    steps = list(net._layers)
    values, records = layer_timer._forward(net, steps, None)
    times = [0.0] * len(steps)
    grads = layer_timer._backward(net, records, values, times)
    weight, bias = net.params["ip"][0].param, net.params["ip"][1].param
    whole = torch.autograd.grad(net.total_loss(values), [weight, bias])
    np.testing.assert_allclose(grads[id(weight)].numpy(), whole[0].numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grads[id(bias)].numpy(), whole[1].numpy(), rtol=1e-6, atol=1e-9)
    assert float(whole[1].abs().sum()) > 0 and all(t >= 0 for t in times)


# ---------------------------------------------------------------- coexistence with a real Caffe

def _executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_find_real_caffe_skips_this_script_and_copies_of_it(tmp_path):
    ours, copy, real = (tmp_path / name for name in ("ours", "copy", "real"))
    for folder in (ours, copy, real):
        folder.mkdir()
    script = _executable(ours / "caffe", "#!/bin/sh\n# from sec.caffe.tools.caffe import installed_main\n")
    _executable(copy / "caffe", "#!/bin/sh\n# from sec.caffe.tools.caffe import installed_main\n")
    assert caffe_tool.find_real_caffe(str(script), os.pathsep.join([str(ours), str(copy)])) is None
    binary = _executable(real / "caffe", "#!/bin/sh\necho real\n")
    found = caffe_tool.find_real_caffe(str(script), os.pathsep.join([str(ours), str(copy), str(real)]))
    assert found == str(binary)
    (real / "caffe").chmod(0o644)       # not executable: not a command
    assert caffe_tool.find_real_caffe(str(script), str(real)) is None


def test_read_weights_helper_reads_what_net_save_wrote(tmp_path):
    paths = write_tiny_classifier(tmp_path)
    net = caffe.Net(str(paths["net"]), caffe.TEST)
    net.save(str(tmp_path / "w.caffemodel"))
    weights = read_weights(tmp_path / "w.caffemodel")
    np.testing.assert_array_equal(weights["ip"][0], net.params["ip"][0].data)


def test_glog_lines_levels_and_the_loggers_left_as_found(capsys, monkeypatch):
    import logging
    root = logging.getLogger()
    before = (root.level, list(root.handlers))

    def body():
        logging.getLogger("sec.caffe.anything").info("one\ntwo")
        glog.log.warning("careful")
        glog.fatal("stop here")

    assert glog.run_tool(body) == FATAL
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert messages(err) == [("I", "one"), ("W", "careful"), ("F", "stop here")] and lines[1] == "two"
    assert {GLOG_LINE.match(line).group(5) for line in lines if GLOG_LINE.match(line)} == {"test_caffe_tools.py"}
    assert (root.level, list(root.handlers)) == before
    # Caffe's tools/extra/extract_seconds.py reads the date as month = field[1:3], day = field[3:]
    import datetime
    month, day = int(lines[0].split()[0][1:3]), int(lines[0].split()[0][3:])
    assert (month, day) == (datetime.date.today().month, datetime.date.today().day)
    monkeypatch.setenv(glog.MINLOGLEVEL_ENV, "2")
    assert glog.run_tool(body) == FATAL
    assert messages(capsys.readouterr().err) == [("F", "stop here")]
    assert glog.run_tool(lambda: int("x")) == FATAL
    assert messages(capsys.readouterr().err) == [("F", "invalid literal for int() with base 10: 'x'")]
