"""The `caffe` command of BVLC Caffe 1.0 (tools/caffe.cpp) on the sec.caffe engine.

    caffe train --solver solver.prototxt [--weights a.caffemodel,b.caffemodel | --snapshot s.solverstate]
                [--gpu 0] [--level N] [--stage a,b] [--sigint_effect stop] [--sighup_effect snapshot]
    caffe test  --model net.prototxt --weights w.caffemodel [--iterations 50] [--gpu 0] [--level N] [--stage a,b]
    caffe time  --model net.prototxt [--iterations 50] [--phase TRAIN|TEST] [--gpu 0] [--level N] [--stage a,b]
    caffe device_query [--gpu 0|0,1|all]

Flags are gflags' (see sec.caffe.tools.flags), log lines glog's (sec.caffe.tools.glog) with
caffe.cpp's texts. Exit statuses as Caffe's: 0 on success and for the usage message (no command,
or more than one), 1 for a flag gflags refuses and after --help, FATAL_EXIT_STATUS (134, what a shell
reports for Caffe's abort) for a failed check, an unknown command or an input that cannot be used
(one F line naming it), 1 with the traceback for any other exception (as Caffe does for a failing
Python layer).

Two console scripts run this module: `sec-caffe` always runs sec.caffe; `caffe` first looks for
a real Caffe binary on PATH and runs that instead (see `find_real_caffe`), as `import caffe` keeps
a real pycaffe's precedence, switched by the same SEC_CAFFE=auto|sec|bvlc. docs/caffe/tools.md.
"""
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch

from sec.caffe.tools import glog
from sec.caffe.tools.flags import FLAG_ERROR_STATUS, Flag, FlagSet

log = glog.log

FLAGS = (
    Flag("gpu", "string", "", "Optional; run in GPU mode on given device IDs separated by ','.Use '-gpu all' "
         "to run on all available GPUs. The effective training batch size is multiplied by the number of "
         "devices."),
    Flag("solver", "string", "", "The solver definition protocol buffer text file."),
    Flag("model", "string", "", "The model definition protocol buffer text file."),
    Flag("phase", "string", "", "Optional; network phase (TRAIN or TEST). Only used for 'time'."),
    Flag("level", "int32", 0, "Optional; network level."),
    Flag("stage", "string", "", "Optional; network stages (not to be confused with phase), separated by ','."),
    Flag("snapshot", "string", "", "Optional; the snapshot solver state to resume training."),
    Flag("weights", "string", "", "Optional; the pretrained weights to initialize finetuning, separated by ','. "
         "Cannot be set simultaneously with snapshot."),
    Flag("iterations", "int32", 50, "The number of iterations to run."),
    Flag("sigint_effect", "string", "stop", "Optional; action to take when a SIGINT signal is received: "
         "snapshot, stop or none."),
    Flag("sighup_effect", "string", "snapshot", "Optional; action to take when a SIGHUP signal is received: "
         "snapshot, stop or none."),
)
USAGE = ("command line brew\n"
         "usage: caffe <command> <args>\n\n"
         "commands:\n"
         "  train           train or finetune a model\n"
         "  test            score a model\n"
         "  device_query    show GPU diagnostic information\n"
         "  time            benchmark model execution time")
FLAG_SET = FlagSet("caffe", USAGE, FLAGS, "sec/caffe/tools/caffe.py")

# The switch `import caffe` reads too (caffe/__init__.py): auto (a real Caffe when there is one), sec, bvlc.
ENGINE_ENV = "SEC_CAFFE"
ENGINE_AUTO, ENGINE_SEC, ENGINE_BVLC = "auto", "sec", "bvlc"
ENGINE_CHOICES = (ENGINE_AUTO, ENGINE_SEC, ENGINE_BVLC)
OWN_SCRIPT_MARKER = b"sec.caffe.tools"
# The binaries exec'd so far (os.pathsep-joined): a `caffe` that is a wrapper of this script (a
# pyenv shim, say) brings it back here, where every one of them is then passed over instead of
# exec'd again, for ever (also when several wrappers stand on PATH).
DEFERRED_ENV = "SEC_CAFFE_DEFERRED_TO"
SCRIPT_HEAD_BYTES = 4096
TRAIN_PHASE, TEST_PHASE = 0, 1


# ---------------------------------------------------------------- devices

def get_gpus(gpu_flag):
    """caffe.cpp's get_gpus: the device ids of --gpu ('' none, 'all' every CUDA device, '0,2')."""
    if gpu_flag == "all":
        return list(range(torch.cuda.device_count()))
    if not gpu_flag:
        return []
    gpus = []
    for text in gpu_flag.split(","):
        if not text.strip().lstrip("-").isdigit():
            glog.fatal(f"--gpu: '{text}' is not a device id (give ids separated by ',', or 'all')")
        gpus.append(int(text))
    return gpus


def use_devices(gpus, asked_by="--gpu"):
    """Caffe::SetDevice + set_mode for the first of `gpus` (CPU when empty); returns the torch device.
    `asked_by` names what asked for the GPUs in the message when one cannot be used."""
    from sec import caffe
    if not gpus:
        caffe.set_mode_cpu()
        return torch.device("cpu")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for gpu in gpus:
        if not 0 <= gpu < available:
            glog.fatal(f"Cannot use GPU {gpu}: torch sees {available} CUDA device(s) "
                       f"(torch.cuda.is_available() is {torch.cuda.is_available()}); asked by {asked_by}")
    caffe.set_device(gpus[0])
    caffe.set_mode_gpu()
    return torch.device("cuda", gpus[0])


def stages_of(stage_flag):
    """caffe.cpp's get_stages_from_flags: boost::split on ',' (so '' gives one empty stage)."""
    return stage_flag.split(",")


def phase_of(phase_flag, default):
    if phase_flag == "":
        return default
    if phase_flag in ("TRAIN", "TEST"):
        return TRAIN_PHASE if phase_flag == "TRAIN" else TEST_PHASE
    glog.fatal('phase must be "TRAIN" or "TEST"')


def _report_device(gpus, with_name):
    if gpus:
        log.info("Use GPU with device ID %d", gpus[0])
        if with_name:
            log.info("GPU device name: %s", torch.cuda.get_device_name(gpus[0]))
    else:
        log.info("Use CPU.")


# ---------------------------------------------------------------- commands

def device_query(flags):
    """Caffe::DeviceQuery for each --gpu device, from torch's CUDA device properties."""
    log.info("Querying GPUs %s", flags.gpu)
    for gpu in get_gpus(flags.gpu):
        use_devices([gpu])
        props = torch.cuda.get_device_properties(gpu)
        rows = (("Device id", gpu), ("Major revision number", props.major),
                ("Minor revision number", props.minor), ("Name", props.name),
                ("Total global memory", props.total_memory),
                ("Number of multiprocessors", props.multi_processor_count))
        for label, value in rows:
            log.info("%-31s%s", f"{label}:", value)
    return 0


def test(flags):
    """Score a model: forward --iterations batches of the TEST net, log every output value per
    batch and their means (with the loss weight of loss outputs), as caffe.cpp's test()."""
    glog.check(flags.model, "FLAGS_model.size() > 0 (0 vs. 0) Need a model definition to score.")
    glog.check(flags.weights, "FLAGS_weights.size() > 0 (0 vs. 0) Need model weights to score.")
    stages = stages_of(flags.stage)
    gpus = get_gpus(flags.gpu)
    _report_device(gpus, with_name=True)
    use_devices(gpus)
    from sec.caffe import Net
    net = Net(flags.model, TEST_PHASE, level=flags.level, stages=stages)
    net.copy_from(flags.weights)
    log.info("Running for %d iterations.", flags.iterations)
    sums, names = [], []
    loss = np.float32(0)
    for i in range(flags.iterations):
        with torch.no_grad():
            outputs = net.run()
            loss += np.float32(net.total_loss(outputs).item())
        index = 0
        for name in net.outputs:
            for score in outputs[name].detach().cpu().numpy().astype(np.float32).ravel():
                if i == 0:
                    sums.append(score)
                    names.append(name)
                else:
                    sums[index] += score        # float32 sums, as Caffe's vector<float>
                index += 1
                log.info("Batch %d, %s = %s", i, name, cpp_float(score))
    with np.errstate(invalid="ignore", divide="ignore"):    # --iterations 0: nan, as Caffe's 0 / 0
        loss /= np.float32(flags.iterations)
    log.info("Loss: %s", cpp_float(loss))
    for total, name in zip(sums, names):
        mean = total / np.float32(flags.iterations)
        weight = np.float32(net.loss_weights.get(name, 0.0))
        extra = f" (* {cpp_float(weight)} = {cpp_float(weight * mean)} loss)" if weight else ""
        log.info("%s = %s%s", name, cpp_float(mean), extra)
    return 0


def time(flags):
    """Benchmark a model: a clean forward/backward, then --iterations timed passes layer by layer
    (sec.caffe.tools.layer_timer), logged as caffe.cpp's time()."""
    from sec.caffe.tools import layer_timer
    glog.check(flags.model, "FLAGS_model.size() > 0 (0 vs. 0) Need a model definition to time.")
    phase = phase_of(flags.phase, TRAIN_PHASE)
    stages = stages_of(flags.stage)
    gpus = get_gpus(flags.gpu)
    _report_device(gpus, with_name=False)
    use_devices(gpus)
    from sec.caffe import Net
    net = Net(flags.model, phase, level=flags.level, stages=stages)
    layer_timer.benchmark(net, flags.iterations)
    return 0


def train(flags):
    from sec.caffe.tools import caffe_train
    return caffe_train.train(flags)


# caffe.cpp's brew functions, by command name.
COMMANDS = {"device_query": device_query, "test": test, "time": time, "train": train}


def cpp_float(value):
    """A float32 as C++'s `ostream << float` writes it (6 significant digits, %g)."""
    return f"{float(value):g}"


def run_command(name, flags):
    command = COMMANDS.get(name)
    if command is None:
        log.error("Available caffe actions:")
        for known in sorted(COMMANDS):
            log.error("\t%s", known)
        glog.fatal(f"Unknown action: {name}")
    return command(flags)


# ---------------------------------------------------------------- entry points

def main(argv=None):
    """`sec-caffe` (and `python -m sec.caffe.tools.caffe`): parse gflags, run one command; the exit status."""
    command_line = FLAG_SET.parse_command_line(sys.argv[1:] if argv is None else list(argv))
    if command_line.exit_status is not None:
        return command_line.exit_status
    if len(command_line.positional) != 1:
        sys.stdout.write(FLAG_SET.usage_text())
        return 0
    flags = types.SimpleNamespace(**command_line.values)
    return glog.run_tool(lambda: run_command(command_line.positional[0], flags))


def installed_main():
    """The `caffe` console script: with SEC_CAFFE=auto (the default) a real Caffe binary on PATH
    runs instead (exec, same arguments), with `bvlc` it must, with `sec` `main()` always runs."""
    choice = os.environ.get(ENGINE_ENV, ENGINE_AUTO).strip().lower() or ENGINE_AUTO
    if choice not in ENGINE_CHOICES:
        sys.stderr.write(f"ERROR: environment variable {ENGINE_ENV}={choice!r}: need one of "
                         f"{', '.join(ENGINE_CHOICES)}\n")
        return FLAG_ERROR_STATUS
    tried = [path for path in os.environ.pop(DEFERRED_ENV, "").split(os.pathsep) if path]
    if tried:
        sys.stderr.write(f"sec.caffe: {tried[-1]} on PATH runs this script again (a wrapper, e.g. a pyenv shim), "
                         "not a BVLC Caffe binary: passed over\n")
    real = find_real_caffe(sys.argv[0], skip=tried) if choice != ENGINE_SEC else None
    if real is not None:
        sys.stderr.write(f"sec.caffe: running the real Caffe binary {real} ({ENGINE_ENV}={ENGINE_SEC} "
                         "or `sec-caffe` runs sec.caffe's)\n")
        sys.stderr.flush()
        os.execve(real, [real] + sys.argv[1:], {**os.environ, DEFERRED_ENV: os.pathsep.join([*tried, real])})
    if choice == ENGINE_BVLC:
        sys.stderr.write(f"ERROR: {ENGINE_ENV}={ENGINE_BVLC}: no BVLC Caffe `caffe` binary on PATH\n")
        return FLAG_ERROR_STATUS
    return main()


def find_real_caffe(own_path, path=None, skip=()):
    """The first executable named `caffe` on PATH that is not this console script (nor another
    copy of it, recognised by naming sec.caffe.tools in its first bytes), nor one of `skip`; None
    when there is none."""
    own = Path(own_path).resolve() if own_path else None
    for folder in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        candidate = shutil.which("caffe", path=folder) if folder else None
        if candidate is None or candidate in skip or (own is not None and Path(candidate).resolve() == own):
            continue
        try:
            with open(candidate, "rb") as handle:
                head = handle.read(SCRIPT_HEAD_BYTES)
        except OSError:
            continue
        if OWN_SCRIPT_MARKER not in head:
            return candidate
    return None


if __name__ == "__main__":
    sys.exit(main())
