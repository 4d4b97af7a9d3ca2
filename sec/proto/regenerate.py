"""Regenerate `caffe_pb2.py` from `caffe.proto` with grpcio-tools' bundled protoc.

    python -m sec.proto.regenerate            # rewrites sec/proto/caffe_pb2.py
    python -m sec.proto.regenerate --out DIR  # writes DIR/caffe_pb2.py instead

The generated module records the protoc version it came from and refuses to load
on an older protobuf runtime, so the minimum `protobuf` in python-dependencies.txt
follows the grpcio-tools used here.
"""
import argparse
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILE = PROTO_DIR / "caffe.proto"


def regenerate(out_dir=PROTO_DIR):
    """Run protoc on caffe.proto, writing `<out_dir>/caffe_pb2.py`; returns that path.

    Raises ImportError when grpcio-tools is not installed and RuntimeError naming
    the schema when protoc fails (its diagnostics go to stderr).
    """
    from grpc_tools import protoc  # a developer tool, not a runtime dependency

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        str(PROTO_FILE),
    ])
    if status != 0:
        raise RuntimeError(f"protoc failed on {PROTO_FILE} with status {status}")
    return out_dir / "caffe_pb2.py"


def main(args):
    path = regenerate(args.out)
    print(f"wrote {path}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(PROTO_DIR),
                        help="folder that receives caffe_pb2.py (default: sec/proto itself)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
