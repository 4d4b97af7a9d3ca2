"""Shared test fixtures.

Real SEC data (the original localization cues, the training list, a photograph) lives in
`../shared/data` beside the checkout and is never committed. Tests that need it ask for
the `shared_data` fixture and are skipped, with the reason, when it is absent.
Set SEC_SHARED_DATA to point somewhere else.
"""
import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data; skips the test when the folder is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real SEC data not found at {SHARED_DATA} (set SEC_SHARED_DATA)")
    return SHARED_DATA


def shared_file(name):
    """Path of one file in ../shared/data, or a skip naming the missing file."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not found: real SEC data is not committed (set SEC_SHARED_DATA)")
    return path


def load_script(relative_path):
    """A script of the checkout (e.g. "training/train.py", not a package module) imported as a
    module, so tests can call its functions and main(args)."""
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
