"""Prometheus metrics of the gRPC server (one registry per server, served on a loopback port).

Names: ``eartalking_live_sessions`` (gauge), ``eartalking_sessions_total{code}`` (ended sessions by gRPC
status), ``eartalking_frames_total``, ``eartalking_frame_latency_seconds`` (arrival of the request that
made a frame ready -> the frame handed to gRPC), ``eartalking_first_frame_latency_seconds`` (the same for
frame 0), ``eartalking_session_open_seconds`` (portrait decode + face + encoder, once per session),
``eartalking_batch_sessions`` (sessions per batched step round).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LAT_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.live = Gauge("eartalking_live_sessions", "sessions currently streaming", registry=r)
        self.sessions = Counter("eartalking_sessions", "sessions ended, by gRPC status code", ["code"], registry=r)
        self.frames = Counter("eartalking_frames", "video frames sent", registry=r)
        self.frame_latency = Histogram("eartalking_frame_latency_seconds", "request arrival -> frame sent",
                                       buckets=_LAT_BUCKETS, registry=r)
        self.first_frame_latency = Histogram("eartalking_first_frame_latency_seconds",
                                             "arrival of frame 0's audio -> frame 0 sent", buckets=_LAT_BUCKETS,
                                             registry=r)
        self.open_latency = Histogram("eartalking_session_open_seconds", "SessionConfig -> session ready",
                                      buckets=_LAT_BUCKETS, registry=r)
        self.batch_size = Histogram("eartalking_batch_sessions", "sessions stepped together in one step_many round",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self._http = None

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the /metrics HTTP endpoint; returns the bound port (``port`` 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
