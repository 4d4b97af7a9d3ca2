"""Caffe's log lines (Google glog's format) for the command-line tools, on Python's logging.

Every record of every logger (the engine's `sec.caffe.*` included) goes to stderr as glog writes
it with Caffe's `FLAGS_alsologtostderr`:

    I1207 05:33:35.123456 12345 solver.py:218] Iteration 20, loss = 0.5

level letter (I W E F), month and day, local time with microseconds, the thread id, the Python
file and line that logged, then the message. This is the classic glog layout of Caffe 1.0's time
(glog 0.3-0.5), which Caffe's own `tools/extra/parse_log.py` reads; glog 0.6, as in Debian 12's
Caffe build, puts the year before the month (`I20261207 ...`). Multi-line messages continue
unprefixed, as glog's do.

`GLOG_minloglevel` (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL) hides lower levels, as in glog.
A fatal error is one F line and exit status FATAL_EXIT_STATUS (see `fatal`).
"""
import logging
import os
import signal
import sys
import threading
import time

# glog's severities, in order, and the Python levels they stand for.
LEVEL_LETTERS = ((logging.CRITICAL, "F"), (logging.ERROR, "E"), (logging.WARNING, "W"), (0, "I"))
GLOG_LEVELS = (logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
MINLOGLEVEL_ENV = "GLOG_minloglevel"
# Caffe's LOG(FATAL) and failed CHECKs abort(); a shell reports that as 128 + SIGABRT. The tools
# exit with that status (without the stack trace and core file of an abort).
FATAL_EXIT_STATUS = 128 + signal.SIGABRT
# Failed CHECKs in caffe.cpp log this prefix before their message, as glog's CHECK does.
CHECK_FAILED = "Check failed: "

log = logging.getLogger("sec.caffe.tools")


class FatalError(Exception):
    """A LOG(FATAL): `fatal()` logs it and the tool's main turns it into FATAL_EXIT_STATUS."""


class GlogFormatter(logging.Formatter):
    """`L MMDD HH:MM:SS.uuuuuu TID file:line] message` (glog's prefix)."""

    def format(self, record):
        letter = next(letter for level, letter in LEVEL_LETTERS if record.levelno >= level)
        stamp = time.localtime(record.created)
        micros = int((record.created - int(record.created)) * 1e6)
        thread = getattr(record, "thread_native_id", None) or threading.get_native_id()
        prefix = (f"{letter}{stamp.tm_mon:02d}{stamp.tm_mday:02d} {stamp.tm_hour:02d}:{stamp.tm_min:02d}:"
                  f"{stamp.tm_sec:02d}.{micros:06d} {thread:5d} {record.filename}:{record.lineno}] ")
        return prefix + record.getMessage()


class _NativeThreadId(logging.Filter):
    """Records the logging thread's kernel id (glog's TID) while the record is made."""

    def filter(self, record):
        record.thread_native_id = threading.get_native_id()
        return True


def min_level(environ=None):
    """The Python logging level that GLOG_minloglevel asks for (INFO when unset)."""
    environ = os.environ if environ is None else environ
    value = environ.get(MINLOGLEVEL_ENV, "0").strip() or "0"
    try:
        index = int(value)
    except ValueError:
        index = 0   # glog reads a malformed value as 0, too
    return GLOG_LEVELS[max(0, min(index, len(GLOG_LEVELS) - 1))]


def setup(stream=None):
    """Send every logger's records to `stream` (default stderr) in glog's format; returns the
    handler (remove it from the root logger to undo)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(GlogFormatter())
    handler.addFilter(_NativeThreadId())
    # On the handler too: a logger given its own level elsewhere (sec.train sets "sec" to INFO for a
    # run's train.log) would otherwise pass lower records past the root's level.
    handler.setLevel(min_level())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min_level())
    return handler


def fatal(message):
    """LOG(FATAL) << message: the F line (file:line of the caller), then FatalError."""
    log.critical(message, stacklevel=2)
    raise FatalError(message)


def check(condition, message):
    """CHECK(condition) << message: `Check failed: <message>` as a fatal line when false."""
    if not condition:
        log.critical(CHECK_FAILED + message, stacklevel=2)
        raise FatalError(message)


def run_tool(body, errors=(ValueError, OSError, RuntimeError)):
    """Run `body()` -> exit status under glog's output: a FatalError (already logged) or one of
    `errors` (logged now as one F line naming what failed) gives FATAL_EXIT_STATUS. Other
    exceptions keep their traceback (Caffe prints a failing Python layer's and returns 1)."""
    root = logging.getLogger()
    level = root.level
    handler = setup()
    try:
        return body()
    except FatalError:
        return FATAL_EXIT_STATUS
    except errors as err:
        log.critical("%s", _one_line(err))
        return FATAL_EXIT_STATUS
    finally:
        handler.flush()
        root.removeHandler(handler)
        root.setLevel(level)


def _one_line(err):
    """The error's message (its first line when it has several) with the class name when the
    message alone does not say what failed."""
    text = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text.splitlines()[0] if "\n" in text else text
