"""The `sec` library: the Caffe-compatible engine on PyTorch and the SEC pipeline, and the top-level
package `caffe` (caffe/__init__.py: `import caffe` gives a real pycaffe when one is on the path,
else the engine `sec.caffe`; docs/caffe/pycaffe.md).

`pylayers/` and `CRF/` are separate pip projects; `python-dependencies.txt`
installs all three.
"""
from setuptools import find_packages, setup

setup(
    name="sec",
    version="0.1.0",
    description="Seed, Expand and Constrain (Kolesnikov & Lampert, ECCV 2016) on PyTorch",
    python_requires=">=3.9",
    packages=find_packages(include=["sec", "sec.*", "caffe"]),
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
        "h5py",
        "torch==2.13.0",
    ],
    extras_require={
        # python -m sec.export: the ONNX exporter needs onnx, its check against the engine onnxruntime
        "export": ["onnx", "onnxruntime"],
        # --tensorboard of training/train.py, train.sh and training/train_localization.py
        "tensorboard": ["tensorboard"],
    },
    # Caffe's command-line tools (sec/caffe/tools). `caffe` runs a real Caffe binary found on PATH
    # instead (SEC_CAFFE=auto, the default; sec, bvlc); `sec-caffe` always runs sec.caffe's (docs/caffe/tools.md).
    entry_points={"console_scripts": [
        "caffe = sec.caffe.tools.caffe:installed_main",
        "sec-caffe = sec.caffe.tools.caffe:main",
        "upgrade_net_proto_text = sec.caffe.tools.upgrade:upgrade_net_proto_text",
        "upgrade_net_proto_binary = sec.caffe.tools.upgrade:upgrade_net_proto_binary",
        "upgrade_solver_proto_text = sec.caffe.tools.upgrade:upgrade_solver_proto_text",
        "extract_features = sec.caffe.tools.extract_features:main",
        "convert_imageset = sec.caffe.tools.convert_imageset:main",
        "compute_image_mean = sec.caffe.tools.compute_image_mean:main",
    ]},
)
