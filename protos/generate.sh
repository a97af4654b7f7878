#!/usr/bin/env bash
# Regenerates bunet/service/proto/ from protos/bunet.proto (needs the dev extra: grpcio-tools).
# The generated code pins its runtime: keep grpcio/protobuf minimums in pyproject.toml in step.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -Iprotos --python_out=bunet/service/proto --grpc_python_out=bunet/service/proto protos/bunet.proto
sed -i 's/^import bunet_pb2 as bunet__pb2/from . import bunet_pb2 as bunet__pb2/' bunet/service/proto/bunet_pb2_grpc.py
