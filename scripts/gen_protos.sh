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
# make every folder a package; imports inside the stubs are rooted at eartalking._proto (added to sys.path by the package)
find "$out" -type d -exec touch {}/__init__.py \;
echo "protos: generated $(echo $protos | wc -w) file(s) into $out"
