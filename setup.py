"""The `sec` library: the Caffe-compatible engine on PyTorch and the SEC pipeline.

`pylayers/` and `CRF/` are separate pip projects; `python-dependencies.txt`
installs all three.
"""
from setuptools import find_packages, setup

setup(
    name="sec",
    version="0.1.0",
    description="Seed, Expand and Constrain (Kolesnikov & Lampert, ECCV 2016) on PyTorch",
    python_requires=">=3.9",
    packages=find_packages(include=["sec", "sec.*"]),
    package_data={"sec.proto": ["caffe.proto"]},
    install_requires=[
        "numpy",
        "scipy",
        "pillow",
        "opencv-python-headless>=4.10",
        "pyyaml",
        "lmdb",
        "plyvel",
        "h5py",
        "protobuf>=4.21,<8",
        "tqdm",
        "torch==2.13.0",
    ],
)
