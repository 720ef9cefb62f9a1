"""The TalkingHead gRPC servicer: a thin, validating adapter from the stream protocol to runtime sessions.

One StreamSession RPC = one session object from the backend (``runtime/session.py`` for the embedded
backend, or the Triton adapter). A reader thread moves incoming requests into a bounded queue (so
gRPC flow control pushes back on a client that sends faster than frames are made, and so an idle stream
can be timed out); the handler applies them in arrival order: audio chunks are cut into pieces of at most
one frame of samples so each frame is sent the moment it exists; control events go to
``session.set_controls`` before the audio that follows them.

Every bad input ends the RPC with a precise status code and a message naming the problem and the limit
(see ``Limits``); the session is closed and its slot freed on every exit path (end, error, cancel,
idle timeout, shutdown).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from typing import Any

import grpc
import numpy as np

from eartalking.cli import UserError
from eartalking.client._stubs import SIGNAL_BY_NAME, pb2, pb2_grpc
from eartalking.config import CONTROL_RANGES

from .api_checks import INVALID as _INVALID
from .api_checks import Abort as _Abort
from .api_checks import Limits, SessionBackend, _get, check_control, decode_portrait, encode_image
from .api_checks import session_error as _session_error
from .metrics import Metrics
from .scheduler import DirectRunner, Scheduler

log = logging.getLogger("eartalking.serve")

_EOF = object()


class _Cancelled(Exception):
    pass


class _Reader:
    """Moves requests from gRPC's iterator into the stream's inbox as ("req", arrival time, request).

    At most ``credits`` requests wait unprocessed, and no more are read while the runner has more than
    ``max_backlog`` samples queued, so gRPC flow control holds back a client that outpaces the model. The
    inbox itself is unbounded: the scheduler thread puts frames there and must never block.
    """

    def __init__(self, request_iterator, credits: int, max_backlog: int) -> None:
        self.inbox: queue.Queue = queue.Queue()
        self.credits = threading.Semaphore(credits)
        self.stop = threading.Event()
        self.backlog = lambda: 0
        self.waiting_since: float | None = None
        self.max_backlog = max_backlog
        self._it = request_iterator
        threading.Thread(target=self._run, name="eartalking-reader", daemon=True).start()

    def _run(self) -> None:
        item: Any = _EOF
        try:
            while True:
                while not self.credits.acquire(timeout=0.2):
                    if self.stop.is_set():
                        return
                while self.backlog() > self.max_backlog:
                    if self.stop.is_set():
                        return
                    time.sleep(0.005)
                self.waiting_since = time.monotonic()  # the idle clock runs only while we wait on the client
                req = next(self._it, _EOF)
                self.waiting_since = None
                if req is _EOF:
                    break
                self.inbox.put(("req", time.monotonic(), req))
        except Exception:  # the RPC ended (cancelled, deadline, shutdown)
            item = _Cancelled()
        self.inbox.put(("req", time.monotonic(), item))


class TalkingHeadServicer(pb2_grpc.TalkingHeadServicer):
    def __init__(self, backend: SessionBackend, limits: Limits, metrics: Metrics, version: str = "",
                 batching: bool = True) -> None:
        self.backend = backend
        self.limits = limits
        self.metrics = metrics
        self.version = version
        self.info = dict(backend.info())
        self._slots = threading.BoundedSemaphore(limits.max_sessions)
        self._live = 0
        self._lock = threading.Lock()
        self.shutting_down = threading.Event()
        step_many = getattr(backend, "step_many", None) if batching else None
        self.scheduler = None
        if step_many is not None:
            self.scheduler = Scheduler(step_many, max_batch=limits.max_sessions, on_batch=metrics.batch_size.observe)

    def runner_for(self, session, reader: _Reader):
        """Batched through the shared scheduler when the backend supports it, else direct calls."""
        make_runner = getattr(self.backend, "make_runner", None)  # e.g. Triton: frames arrive asynchronously
        if make_runner is not None:
            return make_runner(session, reader.inbox)
        if self.scheduler is not None and hasattr(session, "feed"):
            runner = self.scheduler.attach(session, reader.inbox)
            reader.backlog = runner.backlog
            return runner
        return DirectRunner(session)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    @property
    def live_sessions(self) -> int:
        return self._live

    # ------------------------------------------------------------------ unary
    def GetModelInfo(self, request, context):
        i, lim = self.info, self.limits
        ranges = [pb2.ControlRange(signal=SIGNAL_BY_NAME[n], min=lo, max=hi) for n, (lo, hi) in CONTROL_RANGES.items()]
        return pb2.ModelInfo(
            model_id=str(i.get("model_id", "")), image_size=int(i.get("image_size", 0)), fps=float(i.get("fps", 25)),
            sample_rate=int(i.get("sample_rate", 16000)), lookahead_frames=int(i.get("lookahead_frames", 0)),
            control_ranges=ranges, backend=self.backend.name, max_sessions=lim.max_sessions,
            live_sessions=self._live, max_portrait_bytes=lim.max_portrait_bytes,
            max_portrait_pixels=lim.max_portrait_pixels, max_message_bytes=lim.max_message_bytes,
            idle_timeout_s=lim.idle_timeout_s, server_version=self.version,
        )

    # ------------------------------------------------------------------ streaming
    def StreamSession(self, request_iterator, context):
        if self.shutting_down.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another server")
        if not self._slots.acquire(blocking=False):
            self.metrics.sessions.labels(code="RESOURCE_EXHAUSTED").inc()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"server is at its limit of {self.limits.max_sessions} live sessions; retry later")
        with self._lock:
            self._live += 1
        self.metrics.live.inc()
        reader = _Reader(request_iterator, self.limits.queue_messages, self.limits.max_backlog_samples)
        sid = uuid.uuid4().hex[:16]
        code = "OK"
        st = _StreamState(self, context, reader, sid)
        try:
            yield from st.run()
        except _Abort as e:
            code = e.code.name
            log.info("session %s: %s: %s", sid, code, e.message)
            context.abort(e.code, e.message)
        except _Cancelled:
            code = "CANCELLED"
            log.info("session %s: cancelled by the client or the server shutting down", sid)
        except GeneratorExit:
            code = "CANCELLED"
            raise
        except Exception as e:  # a bug or a backend failure: say so, keep serving
            code = "INTERNAL"
            log.exception("session %s failed", sid)
            context.abort(grpc.StatusCode.INTERNAL, f"session failed: {type(e).__name__}: {e}")
        finally:
            reader.stop.set()
            self.metrics.sessions.labels(code=code).inc()
            with self._lock:
                self._live -= 1
            self.metrics.live.dec()
            self._slots.release()
            log.debug("session %s closed (%s, %d frames)", sid, code, st.frames)


class _StreamState:
    """One stream's protocol state machine (config, then audio/controls, then end).

    Control targets are resolved here, in message order: audio that has arrived makes frames
    ``0 .. samples // spf - lookahead - 1`` due, so a control must arrive before the audio that makes its
    frame due, and "next" means the first frame not yet due. This is the same frame whichever runner
    (direct or batched) generates it, and whenever it does.
    """

    def __init__(self, svc: TalkingHeadServicer, context, reader: _Reader, sid: str) -> None:
        self.svc, self.context, self.reader, self.sid = svc, context, reader, sid
        self.limits = svc.limits
        self.runner = None
        self.frames = 0  # frames sent = index of the next frame to send
        self.samples = 0  # PCM samples received
        self.ended = False
        self.encoding = pb2.IMAGE_ENCODING_RAW_RGB
        self.quality = 90
        self.fps = float(svc.info.get("fps", 25))
        self.spf = int(round(int(svc.info.get("sample_rate", 16000)) / self.fps))
        self.lookahead = int(svc.info.get("lookahead_frames", 0))

    @property
    def frames_due(self) -> int:
        return max(0, self.samples // self.spf - self.lookahead)

    def _next(self):
        """The next inbox item. Idle means: we have waited on the client for idle_timeout_s (not while flow
        control holds it back, nor while the tail is flushed after EndOfAudio)."""
        while True:
            try:
                item = self.reader.inbox.get(timeout=0.2)
            except queue.Empty:
                if not self.context.is_active():
                    raise _Cancelled() from None
                since = self.reader.waiting_since
                if not self.ended and since is not None and time.monotonic() - since >= self.limits.idle_timeout_s:
                    raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 f"no request for {self.limits.idle_timeout_s:g} s (idle timeout); session freed"
                                 ) from None
                continue
            if item[0] == "req":
                self.reader.credits.release()
                if isinstance(item[2], _Cancelled):
                    raise item[2]
            return item

    def run(self):
        try:
            _, _, req = self._next()
            if req is _EOF:
                raise _Abort(_INVALID, "stream closed before a SessionConfig was sent")
            kind = req.WhichOneof("request")
            if kind != "config":
                raise _Abort(_INVALID, f"the first request must be a SessionConfig, got {kind or 'an empty request'}")
            yield self._open(req.config)
            while True:
                item = self._next()
                if item[0] == "frames":
                    yield from self._send(item[1], item[2])
                    continue
                if item[0] == "error":
                    raise _session_error(item[1])
                if item[0] == "done":
                    yield self._status()
                    return
                _, t, req = item
                if self.ended:  # anything after EndOfAudio is ignored while the tail is flushed
                    continue
                if req is _EOF:  # half-close without EndOfAudio counts as the end of the audio
                    kind = "end"
                else:
                    kind = req.WhichOneof("request")
                    if kind == "config":
                        raise _Abort(_INVALID, "SessionConfig sent twice: one stream is one session")
                    self._check_size(req)
                if kind == "audio":
                    yield from self._audio(req.audio.pcm, t)
                elif kind == "control":
                    self._control(req.control)
                elif kind == "end":
                    self.ended = True
                    yield from self._send(self._call(self.runner.end, t), t)
                    if not self.runner.batched:
                        yield self._status()
                        return
                else:
                    raise _Abort(_INVALID, "empty SessionRequest (set one of config, audio, control, end)")
        finally:
            if self.runner is not None:
                self.runner.close()

    def _status(self):
        return pb2.SessionResponse(status=pb2.SessionStatus(frames=self.frames, code=0, message="OK"))

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except Exception as e:
            raise _session_error(e) from e

    def _check_size(self, req) -> None:
        n = req.ByteSize()
        if n > self.limits.max_message_bytes:
            raise _Abort(_INVALID, f"request is {n} bytes; the limit is {self.limits.max_message_bytes} bytes "
                         "(send audio in smaller chunks)")

    def _open(self, cfg):
        lim, info = self.limits, self.svc.info
        rate = int(info.get("sample_rate", 16000))
        if cfg.sample_rate not in (0, rate):
            raise _Abort(_INVALID, f"sample_rate {cfg.sample_rate} Hz is not supported: send {rate} Hz PCM16 mono "
                         "(resample on the client)")
        if cfg.audio_encoding not in (pb2.AUDIO_ENCODING_UNSPECIFIED, pb2.AUDIO_ENCODING_PCM16):
            raise _Abort(_INVALID, f"audio_encoding {cfg.audio_encoding} is not supported: PCM16 mono only")
        if cfg.image_encoding not in pb2.ImageEncoding.values():
            raise _Abort(_INVALID, f"unknown image_encoding {cfg.image_encoding}")
        if cfg.jpeg_quality > 100:
            raise _Abort(_INVALID, f"jpeg_quality {cfg.jpeg_quality} is out of range [1, 100] (0 = 90)")
        if not (math.isfinite(cfg.temperature) and 0.0 <= cfg.temperature <= 10.0):
            raise _Abort(_INVALID, f"temperature {cfg.temperature:g} is out of range [0, 10]")
        init = {check_control(c.signal, c.value): float(c.value) for c in cfg.initial_controls}
        rgb = decode_portrait(cfg.portrait, lim)
        t0 = time.monotonic()
        try:
            self.session = self.svc.backend.open(rgb, crop_only=cfg.crop_only, temperature=float(cfg.temperature),
                                                 seed=int(cfg.seed))
        except (UserError, ValueError, LookupError) as e:  # no face found, unusable portrait
            raise _Abort(_INVALID, f"portrait rejected: {e}") from e
        self.svc.metrics.open_latency.observe(time.monotonic() - t0)
        self.runner = self.svc.runner_for(self.session, self.reader)
        if init:
            self._call(self.runner.set_controls, 0, init)
        self.encoding = cfg.image_encoding or pb2.IMAGE_ENCODING_RAW_RGB
        self.quality = cfg.jpeg_quality or 90
        hdr = self.session.header
        size = int(info.get("image_size", 0))
        width = _get(hdr, "width") or (size if cfg.crop_only else rgb.shape[1])
        height = _get(hdr, "height") or (size if cfg.crop_only else rgb.shape[0])
        log.info("session %s opened: portrait %dx%d, output %dx%d, crop_only=%s", self.sid, rgb.shape[1],
                 rgb.shape[0], width, height, cfg.crop_only)
        return pb2.SessionResponse(header=pb2.SessionHeader(
            width=int(width), height=int(height), fps=self.fps, model_id=str(info.get("model_id", "")),
            lookahead_frames=int(info.get("lookahead_frames", 0)), sample_rate=rate, session_id=self.sid,
            image_encoding=self.encoding))

    def _audio(self, data: bytes, t_arrival: float):
        if len(data) % 2:
            raise _Abort(_INVALID, f"audio chunk has {len(data)} bytes: PCM16 needs an even number of bytes")
        pcm = np.frombuffer(data, dtype="<i2")
        for i in range(0, len(pcm), self.spf):  # at most one frame's samples per call: frames leave as made
            if not self.context.is_active():
                raise _Cancelled()
            piece = pcm[i : i + self.spf]
            self.samples += len(piece)
            yield from self._send(self._call(self.runner.feed, piece, t_arrival), t_arrival)

    def _control(self, ev) -> None:
        name = check_control(ev.signal, ev.value)
        which = ev.WhichOneof("target")
        if which == "frame":
            frame: int | str = int(ev.frame)
        elif which == "time_s":
            if not (math.isfinite(ev.time_s) and ev.time_s >= 0):
                raise _Abort(_INVALID, f"control time_s {ev.time_s} must be a finite time >= 0")
            frame = int(math.floor(ev.time_s * self.fps + 1e-6))
        elif which == "next":
            frame = "next"
        else:
            raise _Abort(_INVALID, "ControlEvent needs a target: frame, time_s or next")
        if frame == "next":
            frame = self.frames_due
        elif frame < self.frames_due:
            raise _Abort(_INVALID, f"control {name} for frame {frame} arrived after the audio of frames "
                         f"0..{self.frames_due - 1}; the next frame open to controls is {self.frames_due} "
                         "(or use next)")
        self._call(self.runner.set_controls, frame, {name: float(ev.value)})

    def _send(self, frames: list, t_arrival: float):
        m = self.svc.metrics
        for f in frames:
            img = np.asarray(f.image)
            controls = [pb2.ControlValue(signal=SIGNAL_BY_NAME[k], value=float(v))
                        for k, v in (f.controls or {}).items() if v is not None and k in SIGNAL_BY_NAME]
            msg = pb2.VideoFrame(index=int(f.index), time_s=float(f.time_s),
                                 image=encode_image(img, self.encoding, self.quality), encoding=self.encoding,
                                 width=img.shape[1], height=img.shape[0], controls=controls)
            lat = time.monotonic() - t_arrival
            if self.frames == 0:
                m.first_frame_latency.observe(lat)
            m.frame_latency.observe(lat)
            m.frames.inc()
            self.frames = int(f.index) + 1
            yield pb2.SessionResponse(frame=msg)
