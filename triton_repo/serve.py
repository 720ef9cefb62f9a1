"""Start NVIDIA Triton Inference Server (the binary inside the ``nvidia-pytriton`` wheel) on loopback.

Usage: eartalking triton-serve --repo build/triton_repo [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002]

The wheel ships ``pytriton/tritonserver/bin/tritonserver`` (Triton 2.51), the Python backend and one
``triton_python_backend_stub`` per Python version. We copy the backend plus this Python's stub into a
backend directory under ``.cache/triton_backends`` (the stub must sit beside ``libtriton_python.so``), put the
wheel's ``nvidia_pytriton.libs`` on ``LD_LIBRARY_PATH`` and this venv's ``bin`` first on ``PATH`` (the stub's
Python finds our packages through ``python3`` on PATH), and pass the CPU flags (no pinned/CUDA memory pools,
no GPU metrics). The server binds 127.0.0.1 only. ``TritonServer`` is the reusable context manager (tests,
bench); the command waits for readiness, prints the endpoints and stops the server cleanly on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from eartalking.cli import UserError


def wheel_root() -> Path:
    """The ``pytriton/tritonserver`` folder of the installed nvidia-pytriton wheel."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError("tritonserver not found: install the [triton] extra (pip install --no-deps nvidia-pytriton)")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise UserError(f"{root}/bin/tritonserver is missing: reinstall nvidia-pytriton")
    return root


def libs_dir() -> Path:
    """``nvidia_pytriton.libs`` (the server's bundled shared libraries, also libb64/libcudart for perf_analyzer)."""
    return wheel_root().parent.parent / "nvidia_pytriton.libs"


def backend_dir(cache: Path | None = None) -> Path:
    """A backend directory holding ``python/`` with this interpreter's stub beside ``libtriton_python.so``."""
    root = wheel_root()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserError(f"the nvidia-pytriton wheel has no Python backend stub for Python {ver}")
    cache = cache or Path(os.environ.get("EARTALKING_CACHE", Path.cwd() / ".cache")) / "triton_backends"
    dst = cache / "python"
    if not (dst / "triton_python_backend_stub").is_file() or (dst / "libtriton_python.so").stat().st_size != (
        root / "backends" / "python" / "libtriton_python.so"
    ).stat().st_size:
        tmp = cache / f"python.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(root / "backends" / "python", tmp, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, tmp / "triton_python_backend_stub")
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
    return cache


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """A tritonserver child process on 127.0.0.1; ``with TritonServer(repo) as srv: srv.grpc_url``.

    Ports default to free random ones (tests); ``wait_ready`` polls HTTP ``/v2/health/ready``. ``stop`` sends
    SIGINT, waits, then kills; it is also called on ``__exit__`` and is idempotent. The server's log goes to
    ``log_path`` (default: ``<repo>/../tritonserver.log``) so a failure can be read afterwards.
    """

    def __init__(self, repo: str | Path, http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, log_path: str | Path | None = None, verbose: int = 0,
                 extra_args: list[str] | None = None, binary: str | Path | None = None,
                 exit_timeout_s: int = 10) -> None:
        self.repo = Path(repo).resolve()
        #: another tritonserver (e.g. NGC's /opt/tritonserver/bin/tritonserver, which has the TensorRT backend);
        #: it then uses its own backends and memory pools. Default: $EARTALKING_TRITONSERVER, else the wheel's.
        self.binary = Path(binary or os.environ.get("EARTALKING_TRITONSERVER", "")) if (
            binary or os.environ.get("EARTALKING_TRITONSERVER")) else None
        if self.binary is not None and not self.binary.is_file():
            raise UserError(f"tritonserver binary {self.binary} not found (EARTALKING_TRITONSERVER / --binary)")
        if not (self.repo.is_dir() and any(self.repo.glob("*/config.pbtxt"))):
            raise UserError(f"{self.repo}: not a model repository (no */config.pbtxt); run `eartalking triton-repo`")
        self._auto_ports = not (http_port or grpc_port or metrics_port)
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_path = Path(log_path) if log_path else self.repo.parent / "tritonserver.log"
        self.verbose, self.extra = verbose, list(extra_args or [])
        self.exit_timeout_s = int(exit_timeout_s)
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        net = ["--http-address=127.0.0.1", f"--http-port={self.http_port}", "--grpc-address=127.0.0.1",
               f"--grpc-port={self.grpc_port}", "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
               f"--exit-timeout-secs={self.exit_timeout_s}", f"--log-verbose={self.verbose}", "--strict-readiness=true"]
        if self.binary is not None:  # a full server install: its own backends, GPU memory pools and metrics
            return [str(self.binary), f"--model-repository={self.repo}", *net, *self.extra]
        return [
            str(wheel_root() / "bin" / "tritonserver"), f"--model-repository={self.repo}",
            f"--backend-directory={backend_dir()}", *net, "--allow-gpu-metrics=false", "--allow-cpu-metrics=false",
            "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0", *self.extra,
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.binary is not None:
            env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
            return env
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs_dir()), env.get("LD_LIBRARY_PATH", "")]))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def start(self, timeout_s: float = 180.0) -> TritonServer:
        try:
            return self._start(timeout_s)
        except UserError as e:
            if not (self._auto_ports and "exited" in str(e)):
                raise
            # a free port picked here can be taken by another process before the server binds it: retry once
            self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
            return self._start(timeout_s)

    def _start(self, timeout_s: float) -> TritonServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 (owned by the child; closed in stop)
        self._log = log
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                     start_new_session=True)
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc is not None and self.proc.poll() is not None:
                raise UserError(f"tritonserver exited with code {self.proc.returncode} while starting; "
                                f"log tail:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise UserError(f"tritonserver was not ready within {timeout_s:.0f} s; log tail:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGINT, then SIGKILL to the whole process group if it has not exited ``exit_timeout_s`` + 5 s later.

        Triton's shutdown is sequence-aware: a sequence without END (a client still streaming, or gone without
        END and not yet idle-reaped) counts as in flight, so the server waits its exit timeout, then forces
        its exit, which can abort inside Triton (malloc error, triton-inference-server/server#8390) and leave
        the process hanging. The kill bounds that; sequences idle longer than
        ``max_sequence_idle_microseconds`` are freed earlier and let it exit cleanly.
        """
        p, self.proc = self.proc, None
        if timeout_s is None:
            timeout_s = self.exit_timeout_s + 5.0
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # the server and its stub processes (own session group)
                p.wait(5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default="build/triton_repo", help="rendered model repository (eartalking triton-repo)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log", default=None, help="server log file (default: beside the repository)")
    p.add_argument("--verbose", type=int, default=0, help="tritonserver --log-verbose level")
    p.add_argument("--exit-timeout-s", type=int, default=10,
                   help="on Ctrl-C, wait this long for in-flight requests and open sequences (streams without END) "
                        "before Triton exits anyway; the server is killed 5 s after that")
    p.add_argument("--binary", default=None,
                   help="another tritonserver binary, e.g. /opt/tritonserver/bin/tritonserver in NVIDIA's container "
                        "(needed for the gpu flavour's TensorRT models; default: $EARTALKING_TRITONSERVER, else the "
                        "CPU binary from the nvidia-pytriton wheel)")


def run(args: argparse.Namespace) -> int:
    srv = TritonServer(args.repo, args.http_port, args.grpc_port, args.metrics_port, args.log, args.verbose,
                       binary=args.binary, exit_timeout_s=args.exit_timeout_s)
    for port in (srv.http_port, srv.grpc_port, srv.metrics_port):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise UserError(f"port {port} on 127.0.0.1 is already in use; pick others with --http-port etc.")
    print(f"starting tritonserver on {srv.repo} (log: {srv.log_path}) ...", flush=True)

    def interrupt(signum, frame):  # SIGTERM too; and SIGINT even where the shell set it to be ignored
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    with srv:
        print(f"ready: gRPC {srv.grpc_url}  HTTP http://{srv.http_url}  metrics {srv.metrics_url}", flush=True)
        print("Ctrl-C stops it", flush=True)
        try:
            while srv.proc is not None and srv.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping tritonserver ...", flush=True)
            srv.stop()
            print("stopped", flush=True)
            return 0
        code = srv.proc.returncode if srv.proc else 0
        raise UserError(f"tritonserver exited unexpectedly (code {code}); log tail:\n{srv.log_tail()}")
