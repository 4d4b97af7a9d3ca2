"""gflags-style command lines and glog-style log lines for convert_imageset and compute_image_mean.

Caffe's tools parse their flags with gflags: `--flag=value`, `--flag value`, `-flag` (one or two
dashes), booleans as `--flag`, `--flag=true|false` or `--noflag`, flags and positional arguments in
any order, `--` ending the flags. A bad flag prints gflags' "ERROR: ..." line and exits 1; `--help`
prints the usage and the flags (stdout) and exits 1, as gflags does. Log lines go to stderr in
glog's format: `I20261207 05:45:34.899129 17896 convert_imageset.py:89] A total of 4 images.`
"""
import datetime
import os
import sys
from typing import NamedTuple

TRUE_WORDS = ("true", "t", "yes", "y", "1")
FALSE_WORDS = ("false", "f", "no", "n", "0")
INT32_RANGE = (-2 ** 31, 2 ** 31 - 1)
USAGE_EXIT = 1     # gflags' status for --help, a bad flag, and the tools' usage message


class Flag(NamedTuple):
    kind: str          # "bool", "string" or "int32"
    default: object
    help: str


class FlagError(Exception):
    """A command line gflags refuses; the message is gflags' line (without "ERROR: ")."""


def _convert(name, flag, text):
    if flag.kind == "bool":
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
    elif flag.kind == "int32":
        try:
            value = int(text, 0) if text.strip().lower().startswith(("0x", "-0x")) else int(text)
            if INT32_RANGE[0] <= value <= INT32_RANGE[1]:
                return value
        except ValueError:
            pass
    else:
        return text
    raise FlagError(f"illegal value '{text}' specified for {flag.kind} flag '{name}'")


def parse(argv, flags):
    """(values {name: value}, positional arguments) of `argv` (without the program name)."""
    values = {name: flag.default for name, flag in flags.items()}
    positional, args = [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            positional.extend(args)
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, has_value, text = arg.lstrip("-").partition("=")
        if name in ("help", "helpfull"):
            raise SystemExit("help")
        if name not in flags and name.startswith("no") and flags.get(name[2:], Flag("", 0, "")).kind == "bool":
            if has_value:
                raise FlagError(f"boolean value ({text}) specified for bool flag '{name[2:]}' via --no{name[2:]}")
            values[name[2:]] = False
            continue
        if name not in flags:
            raise FlagError(f"unknown command line flag '{name}'")
        flag = flags[name]
        if not has_value:
            if flag.kind == "bool":
                values[name] = True
                continue
            if not args:
                raise FlagError(f"flag '--{name}' is missing its argument; flag description: {flag.help}")
            text = args.pop(0)
        values[name] = _convert(name, flag, text)
    return values, positional


def usage_text(program, usage, flags):
    lines = [f"{program}: {usage}", "", "", f"  Flags from sec/caffe/tools/{program}.py:"]
    for name, flag in sorted(flags.items()):
        default = f'"{flag.default}"' if flag.kind == "string" else str(flag.default).lower()
        lines.append(f"    -{name} ({flag.help}) type: {flag.kind} default: {default}")
    return "\n".join(lines) + "\n"


def parse_or_exit(program, usage, flags, argv):
    """parse(), or gflags' reaction to --help (usage on stdout) and to a bad flag (ERROR line)."""
    try:
        return parse(sys.argv[1:] if argv is None else argv, flags)
    except SystemExit:
        sys.stdout.write(usage_text(program, usage, flags))
        raise SystemExit(USAGE_EXIT) from None
    except FlagError as error:
        sys.stderr.write(f"ERROR: {error}\n")
        raise SystemExit(USAGE_EXIT) from None


def glog(program, level, message):
    """One glog line on stderr: level letter (I, W, E), date and time, process id, file:line]."""
    caller = sys._getframe(1)
    now = datetime.datetime.now()
    sys.stderr.write(f"{level}{now:%Y%m%d %H:%M:%S.%f} {os.getpid()} {program}.py:{caller.f_lineno}] {message}\n")
    sys.stderr.flush()
