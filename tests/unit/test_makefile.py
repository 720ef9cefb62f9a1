"""The Makefile's graph targets re-export when the checkpoint is newer than the exported graphs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_demo_and_servers_reexport_a_checkpoint_newer_than_its_graphs(tmp_path):
    """`make -n demo` (and verify, bench, grpc-serve, triton-repo) plans `eartalking export` when the checkpoint's
    files are newer than ONNX_DIR/manifest.json or it is missing, and not when the graphs are up to date: a pulled
    or re-shipped checkpoint never runs through the previous one's graphs."""
    ckpt, onnx_dir = tmp_path / "ckpt", tmp_path / "onnx"
    ckpt.mkdir()
    onnx_dir.mkdir()
    for name in ("config.json", "model.safetensors"):
        (ckpt / name).write_text("x")
    stamps = [ROOT / ".venv" / ".setup-stamp", ROOT / "eartalking" / "_proto" / ".stamp"]
    if not all(s.is_file() for s in stamps):
        pytest.skip("run `make setup` first (the dry run would plan the setup instead)")

    def plan(target: str) -> str:
        r = subprocess.run(["make", "-n", "--no-print-directory", target, f"CHECKPOINT={ckpt}",
                            f"ONNX_DIR={onnx_dir}", f"TRITON_REPO={tmp_path / 'repo'}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    export = f"export --checkpoint {ckpt} --out {onnx_dir}"
    assert export in plan("demo")  # no graphs yet
    manifest = onnx_dir / "manifest.json"
    manifest.write_text("{}")
    newest = max(os.stat(p).st_mtime for p in [*stamps, *ckpt.iterdir()])
    os.utime(manifest, (newest + 10, newest + 10))
    for target in ("demo", "verify", "bench", "grpc-serve", "triton-repo"):
        assert export not in plan(target), target
    os.utime(ckpt / "config.json", (newest + 20, newest + 20))  # a re-shipped config
    for target in ("demo", "verify", "bench", "grpc-serve", "triton-repo"):
        assert export in plan(target), target
