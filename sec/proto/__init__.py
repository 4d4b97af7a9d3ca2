"""Caffe's protobuf schema, as SEC uses it.

`caffe.proto` is SEC's own subset of Caffe's schema (same message names, field
names, numbers and defaults as BVLC Caffe); `caffe_pb2` is generated from it and
committed, so users need only the protobuf runtime, any release from 4.21 to 7.x (the
module pins no version, unlike protoc's own output). Regenerate after editing the schema
with ``python -m sec.proto.regenerate``.

    from sec.proto import caffe_pb2
"""
