"""The generated gRPC stubs of ``protos/eartalking/v1/talking_head.proto``, imported robustly.

`make protos` (scripts/gen_protos.sh) generates them into ``eartalking/_proto`` (not committed). In a
source checkout where that has not run yet, or the .proto is newer than the stubs, they are generated
here on first import with grpcio-tools (when installed); otherwise the error says to run `make protos`.

Exports ``pb2`` (messages), ``pb2_grpc`` (stub + servicer), ``SERVICE_NAME`` and the enum <-> name maps.
"""

from __future__ import annotations

import importlib
import os
import re
import tempfile
from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]  # eartalking/
_OUT = _PKG / "_proto"
_PROTO_ROOT = _PKG.parent / "protos"
_PROTO = _PROTO_ROOT / "eartalking" / "v1" / "talking_head.proto"
_MODULE = "eartalking._proto.eartalking.v1"


def _stale() -> bool:
    gen = _OUT / "eartalking" / "v1" / "talking_head_pb2.py"
    if not gen.exists():
        return True
    return _PROTO.exists() and _PROTO.stat().st_mtime > gen.stat().st_mtime + 1.0


def _generate() -> None:
    """Same steps as scripts/gen_protos.sh, in process (used only when the stubs are missing or stale)."""
    try:
        from grpc_tools import protoc  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("gRPC stubs are missing: run `make protos` (needs grpcio-tools)") from e
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    _OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".proto-", dir=_PKG))
    rel = str(_PROTO.relative_to(_PROTO_ROOT))
    rc = protoc.main(
        ["protoc", f"-I{_PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
         f"--grpc_python_out={tmp}", rel]
    )
    if rc != 0:
        raise ImportError(f"protoc failed ({rc}) on {_PROTO}; run `make protos` to see why")
    for d in [tmp, *[p for p in tmp.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    for f in tmp.rglob("*_pb2*.py*"):
        f.write_text(re.sub(r"(?m)^from eartalking\.v1 import", f"from {_MODULE} import", f.read_text()))
    # move into place; another process may have won the race, which is fine
    if _OUT.exists() and not _stale():
        return
    import shutil

    shutil.rmtree(_OUT, ignore_errors=True)
    try:
        os.replace(tmp, _OUT)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _load():
    if _PROTO.exists() and _stale():
        _generate()
        importlib.invalidate_caches()
    try:
        pb2 = importlib.import_module(f"{_MODULE}.talking_head_pb2")
        pb2_grpc = importlib.import_module(f"{_MODULE}.talking_head_pb2_grpc")
    except ImportError as e:
        raise ImportError(f"cannot import the gRPC stubs ({e}); run `make protos`") from e
    return pb2, pb2_grpc


pb2, pb2_grpc = _load()

SERVICE_NAME: str = pb2.DESCRIPTOR.services_by_name["TalkingHead"].full_name  # "eartalking.v1.TalkingHead"

#: ControlSignal enum value <-> control name ("yaw", ...), in eartalking.config.CONTROL_NAMES order.
SIGNAL_BY_NAME: dict[str, int] = {
    v.name.removeprefix("CONTROL_SIGNAL_").lower(): v.number
    for v in pb2.ControlSignal.DESCRIPTOR.values
    if v.number != 0
}
NAME_BY_SIGNAL: dict[int, str] = {n: k for k, n in SIGNAL_BY_NAME.items()}

#: ImageEncoding names accepted by the SDK and CLI.
IMAGE_ENCODINGS: dict[str, int] = {
    "raw": pb2.IMAGE_ENCODING_RAW_RGB,
    "png": pb2.IMAGE_ENCODING_PNG,
    "jpeg": pb2.IMAGE_ENCODING_JPEG,
}
