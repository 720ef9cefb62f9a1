"""Fixtures: a real `eartalking serve` process on 127.0.0.1 (free port), always stopped, and test inputs.

``fake_server`` runs the server over tests/grpc/fake_backend.py (no model; fast, for protocol tests);
``real_server`` over a random-weight export of the test_small preset (the embedded runtime), skipped with
a reason while runtime/session.py or the export command is missing.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ET = [str(Path(sys.executable).parent / "eartalking")]


class ServerProc:
    """A running server: ``target`` HOST:PORT, ``metrics_url``, output ``lines``; ``stop()`` is idempotent."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [*ET, "serve", "--port", "0", "--metrics-port", "0", *args], cwd=ROOT, env=full_env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-30:]))
        line = next(x for x in self.lines if "listening on" in x)
        self.port = int(re.search(r"listening on [^ ]+:(\d+)", line).group(1))
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_url = re.search(r"(http://\S+/metrics)", line).group(1)

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "listening on" in line:
                self._ready.set()
        self._ready.set()

    def metric(self, name: str, labels: str = "") -> float:
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def wait_live(self, value: float, timeout: float = 10.0) -> float:
        t_end = time.monotonic() + timeout
        while True:
            v = self.metric("eartalking_live_sessions")
            if v == value or time.monotonic() > t_end:
                return v
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


FAKE_ARGS = ["--backend-factory", "fake_backend:backend", "--max-sessions", "20", "--idle-timeout", "2.5",
             "--max-portrait-bytes", "600000", "--max-portrait-pixels", "600000", "--max-message-bytes", "65536"]


def start_fake(extra: list[str] = ()) -> ServerProc:
    return ServerProc([*FAKE_ARGS, *extra], env={"PYTHONPATH": str(HERE)})


@pytest.fixture(scope="module")
def fake_server():
    srv = start_fake()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def real_export(tmp_path_factory):
    """A random-weight test_small export made by `eartalking export` (skipped while it does not exist yet)."""
    try:
        import eartalking.runtime.session  # noqa: F401
    except ImportError as e:
        pytest.skip(f"runtime/session.py is not importable yet ({e})")
    out = tmp_path_factory.mktemp("onnx_test_small")
    r = subprocess.run([*ET, "export", "--preset", "test_small", "--random-seed", "0", "--out", str(out)], cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip(f"`eartalking export --preset test_small --random-seed 0` failed: {r.stderr[-500:]}")
    return out


@pytest.fixture(scope="module")
def real_server(real_export):
    srv = ServerProc(["--onnx", str(real_export), "--max-sessions", "20", "--idle-timeout", "5"], timeout=120)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def real_server_direct(real_export):
    """The same, stepping each session in its own thread (--no-batching)."""
    srv = ServerProc(["--onnx", str(real_export), "--max-sessions", "20", "--idle-timeout", "5", "--no-batching"],
                     timeout=120)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def portrait_png() -> bytes:
    """The astronaut (public domain, ships with scikit-image) as PNG bytes."""
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="PNG")
    return buf.getvalue()


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Fresh random int16 audio with a syllable-rate envelope (not zeros), 16 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6))
    x = rng.standard_normal(n) * env * rng.uniform(2000, 8000)
    return np.clip(x, -32768, 32767).astype(np.int16)
