"""Builds the C++ extension krahenbuhl2013._core (metadata lives in pyproject.toml).

Flags: C++17 and -O3 with the baseline instruction set of the target (SSE2 on x86-64),
so the wheel runs on any machine of that architecture; no -march=native.
"""
import sys
from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

# -fno-trapping-math lets the softmax exp vectorise; it changes no results.
OPTIMISE = [] if sys.platform == "win32" else ["-O3", "-fno-trapping-math", "-Wno-psabi"]

ParallelCompile("NPY_NUM_BUILD_JOBS").install()

setup(
    ext_modules=[
        Pybind11Extension(
            "krahenbuhl2013._core",
            sorted(glob("csrc/*.cpp")),
            include_dirs=["csrc"],
            # setuptools does not scan includes: without this, edited headers leave stale objects
            depends=sorted(glob("csrc/*.hpp")),
            cxx_std=17,
            extra_compile_args=OPTIMISE,
        )
    ],
    cmdclass={"build_ext": build_ext},
)
