"""Start the EARTalking gRPC API server (TalkingHead.StreamSession / GetModelInfo, health, reflection).

Usage: eartalking serve [--host 127.0.0.1] [--port 50051] [--backend embedded|triton --triton-url HOST:PORT]
                        [--onnx build/onnx] [--tls-cert CERT.pem --tls-key KEY.pem] [--max-sessions N]
                        [--metrics-port P] [--idle-timeout S]

Sessions run in this process over the ONNX graphs (``--backend embedded``) or in a Triton server's
``talking_head`` model (``--backend triton``). The server listens on loopback unless told otherwise (a
non-loopback address without TLS prints a warning), answers the standard gRPC health service
(``grpc.health.v1.Health``) and server reflection, serves Prometheus metrics on ``--metrics-port``
(loopback), and on SIGINT/SIGTERM stops taking new sessions, lets live streams finish for ``--grace``
seconds, then cancels the rest. ``--port 0`` picks a free port; the "listening on" line names it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np

from eartalking.cli import UserError

from .metrics import Metrics
from .servicer import Limits, SessionBackend, TalkingHeadServicer

log = logging.getLogger("eartalking.serve")

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class EmbeddedBackend:
    """Sessions of ``eartalking.runtime.session`` in this process, sharing one Engine (graphs loaded once)."""

    name = "embedded"

    def __init__(self, onnx_dir: str | Path, device: str = "cpu") -> None:
        from .session import Engine, step_many  # imports ONNX Runtime only when this backend is chosen

        onnx_dir = Path(onnx_dir)
        if not onnx_dir.exists():
            raise UserError(f"--onnx {onnx_dir} does not exist: run `make export` (or pass the export folder)")
        try:
            self.engine = Engine(str(onnx_dir), device=device)
        except TypeError:  # an Engine without a device argument
            self.engine = Engine(str(onnx_dir))
        self._info = _engine_info(self.engine, onnx_dir)
        self.step_many = step_many  # lets the server batch ready frames of all sessions (runtime/scheduler.py)
        self._warm_up()

    def _warm_up(self) -> None:
        """Pay first-call costs (face detector, graph arenas) at start, not in the first user's first frame.

        Measured on the tiny preset here: a fresh process's first session took ~1.3 s to its first frame,
        later ones ~0.2 s (mostly lazy imports of the face alignment). Best effort: failures are logged.
        """
        from . import faces
        from .session import Session

        t0 = time.monotonic()
        S = int(self._info["image_size"]) or 128
        rng = np.random.default_rng(0)
        try:
            try:
                faces.prepare(rng.integers(0, 256, (2 * S, 2 * S, 3), dtype=np.uint8), S)
            except Exception:  # no face in noise, as expected: the detector has run once
                pass
            try:  # alignment's lazy imports cost ~0.65 s on a session's first face (measured)
                faces.aligned_crop(rng.integers(0, 256, (2 * S, 2 * S, 3), dtype=np.uint8),
                                   rng.uniform(0.5 * S, 1.5 * S, (68, 2)), S)
            except Exception as e:
                log.debug("warm-up alignment: %s", e)
            crop = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
            face = SimpleNamespace(crop=crop, photo=crop, paste=lambda c: c)
            s = Session(self.engine, crop, crop_only=True, face=face)
            s.push_audio(np.zeros(640 * (2 + int(self._info["lookahead_frames"])), np.int16))
            s.close()
            log.info("warm-up took %.2f s", time.monotonic() - t0)
        except Exception as e:
            log.warning("warm-up skipped: %s: %s", type(e).__name__, e)

    def info(self) -> dict[str, Any]:
        return self._info

    def open(self, portrait_rgb: np.ndarray, *, crop_only: bool, temperature: float, seed: int):
        from .session import Session

        return Session(self.engine, portrait_rgb, crop_only=crop_only, temperature=temperature, seed=seed)

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()


def _engine_info(engine: Any, onnx_dir: Path) -> dict[str, Any]:
    """model_id, image_size, fps, sample_rate, lookahead_frames from the Engine, else the export manifest."""
    dims: dict[str, Any] = {}
    for attr in ("dims", "meta", "metadata"):
        v = getattr(engine, attr, None)
        if isinstance(v, dict):
            dims.update(v)
            break
    manifest = onnx_dir / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        for k, v in (m.get("dims") or m).items():
            dims.setdefault(k, v)
    return {
        "model_id": str(dims.get("model_id") or dims.get("model_name") or onnx_dir.name),
        "image_size": int(dims.get("image_size", 0)),
        "fps": float(dims.get("fps", 25)),
        "sample_rate": int(dims.get("sample_rate", 16000)),
        "lookahead_frames": int(dims.get("lookahead_frames", 0)),
    }


def load_backend(args: argparse.Namespace) -> SessionBackend:
    if args.backend_factory:  # MODULE:CALLABLE returning a SessionBackend (extensions and tests)
        mod, _, fn = args.backend_factory.partition(":")
        try:
            return getattr(importlib.import_module(mod), fn or "backend")(args)
        except (ImportError, AttributeError) as e:
            raise UserError(f"--backend-factory {args.backend_factory}: {e}") from e
    if args.backend == "triton":
        from .triton_session import TritonBackend

        return TritonBackend(args.triton_url, model=args.triton_model, onnx_dir=args.onnx)
    return EmbeddedBackend(args.onnx, device=args.device)


def build_server(
    backend: SessionBackend,
    limits: Limits,
    metrics: Metrics,
    address: str,
    tls: tuple[bytes, bytes] | None = None,
    workers: int | None = None,
    batching: bool = True,
) -> tuple[grpc.Server, TalkingHeadServicer, Any, int]:
    """A started-but-not-yet-started gRPC server with the servicer, health and reflection; returns the port."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from eartalking.client._stubs import SERVICE_NAME, pb2_grpc

    opts = [
        ("grpc.max_receive_message_length", limits.transport_max_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    pool = futures.ThreadPoolExecutor(max_workers=workers or limits.max_sessions + 8, thread_name_prefix="grpc")
    server = grpc.server(pool, options=opts)
    servicer = TalkingHeadServicer(backend, limits, metrics, version=_version(), batching=batching)
    pb2_grpc.add_TalkingHeadServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    if tls:
        key, cert = tls
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise UserError(f"cannot listen on {address} (address in use or not available)")
    return server, servicer, health_servicer, port


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("eartalking")
    except Exception:
        return "unknown"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0 = pick a free one)")
    p.add_argument("--backend", choices=("embedded", "triton"), default="embedded", help="where sessions run")
    p.add_argument("--onnx", default="build/onnx",
                   help="exported graphs (embedded); with --backend triton, the export the repository came from")
    p.add_argument("--device", default="cpu", help="embedded backend device (cpu or cuda)")
    p.add_argument("--triton-url", default="127.0.0.1:8001", help="Triton gRPC endpoint (triton backend)")
    p.add_argument("--triton-model", default="talking_head", help="Triton decoupled streaming model")
    p.add_argument("--tls-cert", help="PEM certificate chain (enables TLS; needs --tls-key)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--max-sessions", type=int, default=8, help="live sessions before RESOURCE_EXHAUSTED")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port on loopback (0 = free)")
    p.add_argument("--metrics-host", default="127.0.0.1")
    d = Limits()
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, help="seconds without a request")
    p.add_argument("--max-portrait-bytes", type=int, default=d.max_portrait_bytes)
    p.add_argument("--max-portrait-pixels", type=int, default=d.max_portrait_pixels)
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    p.add_argument("--grace", type=float, default=10.0, help="seconds live streams get to finish on shutdown")
    p.add_argument("--no-batching", action="store_true",
                   help="step each session in its own thread instead of batching ready frames across sessions")
    p.add_argument("--workers", type=int, default=None, help="gRPC thread pool size (default max-sessions + 8)")
    p.add_argument("--backend-factory", default=None, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_sessions < 1:
        raise UserError(f"--max-sessions must be >= 1, got {args.max_sessions}")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UserError("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert:
        try:
            tls = (Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())
        except OSError as e:
            raise UserError(f"cannot read the TLS key/certificate: {e}") from e
    elif args.host not in _LOOPBACK:
        print(f"eartalking serve: warning: listening on {args.host} without TLS (--tls-cert/--tls-key)",
              file=sys.stderr)
    limits = Limits(max_sessions=args.max_sessions, max_portrait_bytes=args.max_portrait_bytes,
                    max_portrait_pixels=args.max_portrait_pixels, max_message_bytes=args.max_message_bytes,
                    idle_timeout_s=args.idle_timeout)
    backend = load_backend(args)
    metrics = Metrics()
    host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
    server, servicer, health_servicer, port = build_server(backend, limits, metrics, f"{host}:{args.port}", tls,
                                                           args.workers, batching=not args.no_batching)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    info = servicer.info
    mline = ""
    if args.metrics_port is not None:
        mport = metrics.serve(args.metrics_port, args.metrics_host)
        mline = f", metrics on http://{args.metrics_host}:{mport}/metrics"
    mode = "batched" if servicer.scheduler is not None else "per-stream"
    print(f"eartalking serve: listening on {args.host}:{port} ({'TLS' if tls else 'plaintext'}, backend "
          f"{backend.name}, model {info['model_id']}, {info['image_size']} px, {mode} stepping, max "
          f"{limits.max_sessions} sessions){mline}", flush=True)
    while not stop.wait(0.5):
        pass
    live = servicer.live_sessions
    print(f"eartalking serve: shutting down ({live} live session(s) get {args.grace:g} s to finish)", flush=True)
    health_servicer.enter_graceful_shutdown()
    servicer.shutting_down.set()
    server.stop(grace=args.grace).wait()
    servicer.close()
    metrics.close()
    close = getattr(backend, "close", None)
    if callable(close):
        close()
    print("eartalking serve: stopped", flush=True)
    return 0
