"""Caffe's upgrade tools: `upgrade_net_proto_text`, `upgrade_net_proto_binary`,
`upgrade_solver_proto_text` (tools/upgrade_*.cpp), each `TOOL INPUT OUTPUT`.

The input is read (text or binary protobuf), upgraded by sec.caffe.upgrade_proto as Caffe's
UpgradeNetAsNeeded / UpgradeSolverAsNeeded do (every step for nets: V0, data transformation
fields, V1, input fields, BatchNorm params), and written in the same form, with Caffe's log lines.

Exit statuses, as Caffe's: 0 done; 1 wrong number of arguments, or the upgrade logged problems
(the output is still written, as Caffe writes it); 2 the input does not parse. Where Caffe is
silent this project's statuses hold: an input that cannot be read (missing, a folder) is 2 and an
output that cannot be written is 2, both with one line naming the file, and no output is left
behind (Caffe writes an empty file / reports success); what Caffe refuses with LOG(FATAL) (a
padding layer feeding a ReLU, an unknown V0 type, `layer` mixed with `layers`, solver_type with
type) is one F line and 134, nothing written. Outputs are written atomically.
"""
import argparse
import sys
from pathlib import Path
from typing import NamedTuple

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from sec.caffe import formats, upgrade_proto
from sec.caffe.tools import glog
from sec.proto import caffe_pb2

log = glog.log
USAGE_STATUS = 1
PROBLEMS_STATUS = 1
FILE_STATUS = 2


class Tool(NamedTuple):
    """One upgrade tool: what it reads and writes and how it upgrades."""
    usage: str             # Caffe's usage line after the tool name
    message: type          # the protobuf message class
    binary: bool           # binary protobuf (else text)
    label: str             # "NetParameter" / "SolverParameter" in messages
    needs: object          # message -> bool
    upgrade: object        # (message, source) -> list of problems


def _solver_problems(solver, source):
    upgrade_proto.upgrade_solver_as_needed(solver, source)
    return []


TOOLS = {
    "upgrade_net_proto_text": Tool("v0_net_proto_file_in net_proto_file_out", caffe_pb2.NetParameter, False,
                                   "NetParameter", upgrade_proto.net_needs_upgrade,
                                   upgrade_proto.upgrade_net_as_needed),
    "upgrade_net_proto_binary": Tool("v0_net_proto_file_in net_proto_file_out", caffe_pb2.NetParameter, True,
                                     "NetParameter", upgrade_proto.net_needs_upgrade,
                                     upgrade_proto.upgrade_net_as_needed),
    "upgrade_solver_proto_text": Tool("old_solver_proto_file_in solver_proto_file_out", caffe_pb2.SolverParameter,
                                      False, "SolverParameter", lambda s: s.HasField("solver_type"),
                                      _solver_problems),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def build_parser(name):
    parser = _Parser(prog=name, add_help=False, description=TOOLS[name].usage)
    parser.add_argument("input", help="the file to upgrade")
    parser.add_argument("output", help="where the upgraded file is written (replaced atomically)")
    return parser


def run(name, argv):
    """The tool `name` on `argv` (its two file arguments); returns the exit status."""
    tool = TOOLS[name]
    try:
        args = build_parser(name).parse_args(argv)
    except ValueError:
        args = None

    def body():
        if args is None:
            log.error("Usage: %s %s", name, tool.usage)
            return USAGE_STATUS
        return _upgrade(tool, args.input, args.output)

    return glog.run_tool(body, errors=(upgrade_proto.UpgradeError,))


def _upgrade(tool, source, target):
    form = "binary" if tool.binary else "text"
    message = tool.message()
    try:
        data = Path(source).read_bytes()
        if tool.binary:
            message.ParseFromString(data)
        else:
            text_format.Parse(data.decode("utf-8"), message)
    except OSError as err:
        log.error("Failed to read input %s file %s: %s", form, source, err.strerror or err)
        return FILE_STATUS
    except (DecodeError, text_format.ParseError, UnicodeDecodeError) as err:
        log.error("Failed to parse input %s file as %s: %s (%s)", form, tool.label, source, err)
        return FILE_STATUS
    problems = []
    if tool.needs(message):
        problems = tool.upgrade(message, source)
        if problems:
            log.error("Encountered error(s) while upgrading prototxt; see details above.")
    else:
        log.error("File already in latest proto format: %s", source)
    data = message.SerializeToString() if tool.binary else formats.message_to_text(message).encode()
    try:
        formats.atomic_write_bytes(target, data)
    except OSError as err:
        log.error("Failed to write %s: %s", target, err.strerror or err)
        return FILE_STATUS
    log.info("Wrote upgraded %s %s proto to %s", tool.label, form, target)
    return PROBLEMS_STATUS if problems else 0


def upgrade_net_proto_text():
    """Console script `upgrade_net_proto_text IN OUT`."""
    return run("upgrade_net_proto_text", sys.argv[1:])


def upgrade_net_proto_binary():
    """Console script `upgrade_net_proto_binary IN OUT`."""
    return run("upgrade_net_proto_binary", sys.argv[1:])


def upgrade_solver_proto_text():
    """Console script `upgrade_solver_proto_text IN OUT`."""
    return run("upgrade_solver_proto_text", sys.argv[1:])


def main(argv=None):
    """`python -m sec.caffe.tools.upgrade TOOL IN OUT` (TOOL one of TOOLS)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in TOOLS:
        sys.stderr.write(f"usage: python -m sec.caffe.tools.upgrade {{{','.join(TOOLS)}}} IN OUT\n")
        return USAGE_STATUS
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
