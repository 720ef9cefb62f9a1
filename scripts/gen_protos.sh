#!/usr/bin/env bash
# Generates Python gRPC stubs from protos/ into eartalking/_proto (never hand-edited, not committed).
# Usage: scripts/gen_protos.sh PYTHON
set -euo pipefail
py=${1:-.venv/bin/python}
out=eartalking/_proto
rm -rf "$out"; mkdir -p "$out"
protos=$(cd protos && find . -name '*.proto' | sort)
if [ -z "$protos" ]; then touch "$out/__init__.py"; exit 0; fi
(cd protos && "../$py" -m grpc_tools.protoc -I. --python_out="../$out" --pyi_out="../$out" --grpc_python_out="../$out" $protos)
# make every folder a package. protoc roots the stubs' cross-imports at the proto package
# (`from eartalking.v1 import ...`), which would resolve inside our own `eartalking` package; root them at
# eartalking._proto instead so the stubs import as eartalking._proto.eartalking.v1.* with no sys.path tricks.
find "$out" -type d -exec touch {}/__init__.py \;
find "$out" -name '*_pb2*.py*' -exec sed -i -E 's/^from eartalking\.v1 import/from eartalking._proto.eartalking.v1 import/' {} +
echo "protos: generated $(echo $protos | wc -w) file(s) into $out"
