"""Run BVLC Caffe's pycaffe test suite (python/caffe/test/*.py, unedited) and print its outcomes.

Runs in whatever Python calls it, against whatever `import caffe` gives there (the real pycaffe
under Caffe's Python with its python/ on PYTHONPATH, this project's engine under the project's
Python): tests/test_bvlc_pycaffe_suite.py and tests/test_pycaffe_live.py run it both ways. The last
stdout line is JSON {test id: [outcome, message]}, outcome one of ok, fail, error, skip; a test
module that fails to import is the id `unittest.loader._FailedTest.<module>`. Works on Python 3.9+
with the standard library only (Caffe's Python has no pytest).

    python tests/pycaffe_suite_runner.py --tests <caffe>/python/caffe/test --workdir /tmp/scratch
"""
import argparse
import json
import os
import subprocess
import sys
import tarfile
import unittest

MESSAGE_CHARS = 2000   # the tail of a failure's traceback kept in the JSON
SUITE_FOLDER = "python/caffe/test"
DRAWN_FOLDERS = ("models", "examples")   # test_draw draws every net prototxt under these
RUN_TIMEOUT_S = 600


class Recorder(unittest.TestResult):
    """Every test's outcome by id."""

    def __init__(self):
        super().__init__()
        self.outcomes = {}

    def _record(self, test, outcome, message=""):
        self.outcomes[test.id()] = [outcome, message[-MESSAGE_CHARS:]]

    def addSuccess(self, test):
        self._record(test, "ok")

    def addFailure(self, test, err):
        self._record(test, "fail", self._exc_info_to_string(err, test))

    def addError(self, test, err):
        self._record(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        self._record(test, "skip", reason)

    def addExpectedFailure(self, test, err):
        self._record(test, "ok", "expected failure")

    def addUnexpectedSuccess(self, test):
        self._record(test, "fail", "unexpected success")


def run_suite(tests, workdir):
    """{test id: [outcome, message]} of the suite in folder `tests`, run from `workdir` (the
    suite writes files, e.g. test_solver's snapshot, into the current folder)."""
    tests = os.path.abspath(tests)
    sys.path.insert(0, tests)
    os.makedirs(workdir, exist_ok=True)
    os.chdir(workdir)
    suite = unittest.defaultTestLoader.discover(tests, pattern="test_*.py", top_level_dir=tests)
    recorder = Recorder()
    suite.run(recorder)
    return recorder.outcomes


def extract_suite(tarball, dest):
    """Unpack the suite and the prototxts test_draw walks from Caffe's source tarball into `dest`;
    returns the suite's folder (`<dest>/<top>/python/caffe/test`, so that test_draw finds
    `../../../models` and `../../../examples` as in a source tree)."""
    with tarfile.open(tarball) as archive:
        members = []
        for member in archive.getmembers():
            top, _, rest = member.name.partition("/")
            wanted = (rest.startswith(SUITE_FOLDER + "/") and rest.endswith(".py")) or (
                rest.split("/")[0] in DRAWN_FOLDERS and rest.endswith(".prototxt"))
            if member.isfile() and wanted:
                members.append(member)
        archive.extractall(dest, members=members, filter="data")
        for folder in DRAWN_FOLDERS:   # test_draw asserts both exist
            os.makedirs(os.path.join(dest, top, folder), exist_ok=True)
    return os.path.join(dest, top, SUITE_FOLDER)


def run_in(python, tests, workdir, env):
    """Run this script under `python` with environment `env`; returns (outcomes, completed process)."""
    result = subprocess.run([str(python), os.path.abspath(__file__), "--tests", str(tests), "--workdir", str(workdir)],
                            env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{python} {__file__} exited {result.returncode}: {result.stderr[-3000:]}")
    return json.loads(lines[-1]), result


def main(args):
    outcomes = run_suite(args.tests, args.workdir)
    sys.stdout.flush()
    print(json.dumps(outcomes, sort_keys=True))
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", required=True, help="folder holding the suite (python/caffe/test of the Caffe source)")
    parser.add_argument("--workdir", required=True, help="scratch folder to run in (the suite writes files there)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
