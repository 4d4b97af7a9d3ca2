"""Command-line flags as Google gflags parses them (Caffe's tools use gflags), on argparse.

Accepted spellings: `--flag=value`, `--flag value`, `-flag value`, `-flag=value`; booleans also
bare (`--flag` is true) and as `--noflag`; `--` ends the flags. Flags and positional arguments
may be interleaved (`caffe train --solver s.prototxt` and `caffe --solver s.prototxt train`).

Errors are gflags' one-line messages on stderr with exit status 1 (FLAG_ERROR_STATUS):

    ERROR: unknown command line flag 'foo'
    ERROR: illegal value 'abc' specified for int32 flag 'iterations'
    ERROR: flag '--solver' is missing its argument; flag description: ...
    ERROR: boolean value (nosolver) specified for string command line flag

`--help` (also `--helpshort`) prints the usage and every flag to stdout and exits 1, as gflags
does; `--version` prints `<program> version 1.0.0` and exits 0.
"""
import argparse
import re
import sys
from typing import NamedTuple

FLAG_ERROR_STATUS = 1
HELP_EXIT_STATUS = 1        # gflags exits 1 after --help
CAFFE_VERSION = "1.0.0"     # BVLC Caffe's CAFFE_VERSION at 9b89154
USAGE_WIDTH = 80           # gflags' line length in --help
CONTINUATION = "      "    # gflags' indent of a flag's continuation lines
# strtol(value, 0): decimal, 0x hexadecimal or 0 octal, with an optional sign (gflags' int32).
INT_PATTERN = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
INT32_RANGE = (-2 ** 31, 2 ** 31 - 1)
TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0")
BUILTIN_BOOLS = ("help", "helpshort", "version")


class Flag(NamedTuple):
    """One gflags flag: name, type ('string', 'int32' or 'bool'), default, description."""
    name: str
    type: str
    default: object
    help: str


class FlagError(Exception):
    """A command line gflags refuses; the message is gflags' (without 'ERROR: ')."""


class CommandLine(NamedTuple):
    """A tool's parsed command line: typed flag values {name: value}, the positional arguments,
    and the exit status when gflags itself ends the program (a refused flag, --help, --version),
    else None."""
    values: dict
    positional: list
    exit_status: object


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise FlagError(message)


class FlagSet:
    """The flags of one tool: `parse(argv)` -> (values {name: typed value}, positional list)."""

    def __init__(self, program, usage, flags, source):
        self.program, self.usage, self.flags, self.source = program, usage, list(flags), source
        self._by_name = {f.name: f for f in self.flags}
        self._parser = _Parser(prog=program, add_help=False, allow_abbrev=False)
        self._parser.add_argument("positional", nargs="*", help="the command and its arguments")
        for flag in self.flags:
            self._parser.add_argument(f"-{flag.name}", f"--{flag.name}", dest=flag.name, default=None,
                                      help=flag.help)
        for name in BUILTIN_BOOLS:
            self._parser.add_argument(f"-{name}", f"--{name}", dest=name, default=None,
                                      help=f"gflags' --{name}")

    def parse(self, argv):
        """Typed flag values and the positional arguments; FlagError with gflags' message."""
        argv, rest = _split_at_double_dash(list(argv))
        argv = [self._expand_boolean(arg) for arg in argv]
        self._check_arguments_present(argv)
        namespace, unknown = self._parser.parse_known_intermixed_args(argv)
        for arg in unknown:
            if arg.startswith("-") and arg != "-":
                raise FlagError(f"unknown command line flag '{arg.lstrip('-').split('=', 1)[0]}'")
        positional = list(namespace.positional) + [a for a in unknown if not a.startswith("-") or a == "-"]
        values = {}
        for flag in self.flags:
            raw = getattr(namespace, flag.name)
            values[flag.name] = flag.default if raw is None else _typed(flag, raw)
        for name in BUILTIN_BOOLS:
            raw = getattr(namespace, name)
            values[name] = raw is not None and _typed(Flag(name, "bool", False, ""), raw)
        return values, positional + rest

    def parse_command_line(self, argv, stdout=None, stderr=None):
        """gflags' ParseCommandLineFlags as a tool's main meets it: a refused flag is gflags' ERROR
        line on `stderr` and FLAG_ERROR_STATUS; --help / --helpshort / --version act as
        `handle_builtin`; otherwise the CommandLine's exit_status is None and the tool goes on."""
        try:
            values, positional = self.parse(argv)
        except FlagError as err:
            (stderr or sys.stderr).write(f"ERROR: {err}\n")
            return CommandLine({}, [], FLAG_ERROR_STATUS)
        return CommandLine(values, positional, self.handle_builtin(values, stdout))

    def _expand_boolean(self, arg):
        """`--name` of a boolean -> `--name=true`; `--noname` -> `--name=false`."""
        match = re.fullmatch(r"--?([A-Za-z0-9_]+)", arg)
        if not match:
            return arg
        name = match.group(1)
        if self._kind(name) == "bool":
            return f"--{name}=true"
        if name.startswith("no") and self._kind(name[2:]) == "bool":
            return f"--{name[2:]}=false"
        if name.startswith("no") and self._kind(name[2:]) is not None:
            raise FlagError(f"boolean value ({name}) specified for {self._kind(name[2:])} command line flag")
        return arg

    def _kind(self, name):
        if name in BUILTIN_BOOLS:
            return "bool"
        flag = self._by_name.get(name)
        return flag.type if flag else None

    def _check_arguments_present(self, argv):
        """gflags' message for a valued flag that ends the command line."""
        last = argv[-1] if argv else ""
        match = re.fullmatch(r"--?([A-Za-z0-9_]+)", last)
        if match and self._kind(match.group(1)) not in (None, "bool"):
            flag = self._by_name[match.group(1)]
            raise FlagError(f"flag '{last}' is missing its argument; flag description: {flag.help}")

    def usage_text(self, with_flags=True):
        """The usage message, then (gflags' ShowUsageWithFlags) every flag with type and default."""
        text = f"{self.program}: {self.usage}\n"
        if not with_flags:
            return text
        lines = [text, f"  Flags from {self.source}:"]
        for flag in sorted(self.flags, key=lambda f: f.name):
            default = f'"{flag.default}"' if flag.type == "string" else str(flag.default).lower()
            lines.append(_describe(f"    -{flag.name} ({flag.help})", [f"type: {flag.type}", f"default: {default}"]))
        return "\n".join(lines) + "\n"

    def handle_builtin(self, values, stdout=None):
        """Act on --help/--helpshort/--version as gflags does: the exit status, or None to go on."""
        stdout = stdout or sys.stdout
        if values["help"] or values["helpshort"]:
            stdout.write(self.usage_text())
            return HELP_EXIT_STATUS
        if values["version"]:
            stdout.write(f"{self.program} version {CAFFE_VERSION}\n")
            return 0
        return None


def _split_at_double_dash(argv):
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1:]
    return argv, []


def _typed(flag, raw):
    if flag.type == "string":
        return raw
    if flag.type == "int32":
        value = _strtol(raw.strip())
        if value is None or not INT32_RANGE[0] <= value <= INT32_RANGE[1]:
            raise FlagError(f"illegal value '{raw}' specified for int32 flag '{flag.name}'")
        return value
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise FlagError(f"illegal value '{raw}' specified for bool flag '{flag.name}'")


def _strtol(text):
    """strtol(text, NULL, 0) of a whole string, or None when it is not an integer."""
    match = INT_PATTERN.fullmatch(text)
    if not match:
        return None
    sign, digits = match.groups()
    if digits[:2].lower() == "0x":
        base = 16
    elif digits.startswith("0") and len(digits) > 1:
        base = 8
    else:
        base = 10
    value = int(digits, base)
    return -value if sign == "-" else value


def _describe(main, pieces):
    """gflags' DescribeOneFlag layout: `main` broken at the last space that keeps a line under
    USAGE_WIDTH, continuation lines indented by CONTINUATION; each of `pieces` ("type: ...",
    "default: ...") then follows on the same line when it fits, else starts a new one."""
    out, used = "", 0
    while used + len(main) >= USAGE_WIDTH:
        cut = main.rfind(" ", 0, USAGE_WIDTH - used)
        if cut <= 0:
            break
        out += main[:cut] + "\n" + CONTINUATION
        main, used = main[cut:].lstrip(" "), len(CONTINUATION)
    out, used = out + main, used + len(main)
    for piece in pieces:
        if used + 1 + len(piece) >= USAGE_WIDTH:
            out, used = out + "\n" + CONTINUATION, len(CONTINUATION)
        else:
            out, used = out + " ", used + 1
        out, used = out + piece, used + len(piece)
    return out
