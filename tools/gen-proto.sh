#!/bin/sh
# Regenerate core/proto/*_pb2*.py from core/proto/ipamd.proto (needs grpcio-tools, in the
# test extras).  The generated files are committed: installing vpccni never needs protoc.
set -eu
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/vpccni/core/proto"
cp core/proto/ipamd.proto "$tmp/vpccni/core/proto/"
"$python" -m grpc_tools.protoc -I "$tmp" --python_out="$tmp" --pyi_out="$tmp" \
    --grpc_python_out="$tmp" "$tmp/vpccni/core/proto/ipamd.proto"
cp "$tmp"/vpccni/core/proto/ipamd_pb2.py "$tmp"/vpccni/core/proto/ipamd_pb2.pyi \
    "$tmp"/vpccni/core/proto/ipamd_pb2_grpc.py core/proto/
