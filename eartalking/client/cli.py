"""Stream a portrait + speech to an EARTalking server and write the talking-head MP4 (H.264 + AAC).

Usage: eartalking client --server HOST:PORT --portrait P --audio A.wav [--realtime] [--controls C.json]
                         --out out.mp4 [--tls-ca CA.pem] [--crop-only] [--image-encoding raw|png|jpeg]

The audio (any WAV/FLAC/MP3, resampled to 16 kHz mono) is sent in --chunk-ms chunks; with --realtime
they are paced like a microphone. The controls file is a JSON list of events such as
``[{"frame": 20, "blink": 1.0}, {"time": 1.5, "yaw": 15}]``. Prints the first-frame latency (first
audio sent -> frame 0 received, and frame 0's audio + lookahead sent -> frame 0 received) and frames/s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eartalking.cli import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT of `eartalking serve`")
    p.add_argument("--portrait", required=True, help="image file with one face")
    p.add_argument("--audio", required=True, help="speech file (WAV, FLAC, MP3, ...)")
    p.add_argument("--out", required=True, help="output MP4")
    p.add_argument("--controls", help="JSON list of control events ({frame|time, signal: value})")
    p.add_argument("--realtime", action="store_true", help="pace the audio like a live microphone")
    p.add_argument("--chunk-ms", type=float, default=40.0, help="audio chunk length (ms)")
    p.add_argument("--crop-only", action="store_true", help="bare model frames instead of the pasted-back photo")
    p.add_argument("--image-encoding", choices=("raw", "png", "jpeg"), default="raw")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    p.add_argument("--tls-ca", help="use TLS, trusting this CA certificate (PEM)")
    p.add_argument("--timeout", type=float, default=None, help="deadline for the whole stream (s)")


def _load_controls(path: str | None) -> list[dict]:
    if not path:
        return []
    try:
        events = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read controls file {path}: {e}") from e
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise UserError(f"controls file {path} must be a JSON list of objects like {{\"frame\": 20, \"blink\": 1}}")
    return events


def run(args: argparse.Namespace) -> int:
    import grpc

    from . import TalkingHeadClient
    from .media import Mp4Writer, read_audio
    from .messages import control_events

    if not Path(args.portrait).is_file():
        raise UserError(f"portrait not found: {args.portrait}")
    try:
        pcm = read_audio(args.audio)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from e
    controls = _load_controls(args.controls)
    for ev in controls:
        try:
            control_events(ev)
        except (ValueError, TypeError) as e:
            raise UserError(f"controls file {args.controls}: {e}") from e
    tls = args.tls_ca or (True if args.tls else None)
    with TalkingHeadClient(args.server, tls=tls) as client:
        try:
            client.wait_ready(timeout=10.0)
        except grpc.FutureTimeoutError:
            raise UserError(f"no server answers at {args.server} (is `eartalking serve` running?)") from None
        stream = client.stream(
            args.portrait, pcm, controls, realtime=args.realtime, chunk_ms=args.chunk_ms,
            image_encoding=args.image_encoding, crop_only=args.crop_only, temperature=args.temperature,
            seed=args.seed, timeout=args.timeout,
        )
        try:
            with Mp4Writer(args.out, fps=25, audio=pcm) as writer:
                for frame in stream:
                    writer.add(frame.image)
                    if frame.index % 25 == 0:
                        print(f"\rframes: {frame.index + 1}", end="", file=sys.stderr, flush=True)
        except grpc.RpcError as e:
            print(file=sys.stderr)
            raise UserError(f"server said {e.code().name}: {e.details()}") from None
    s = stream.stats
    print(f"\rwrote {args.out}: {s.frames} frames ({s.frames / 25:.2f} s of video)", file=sys.stderr)
    ff = f"{s.first_frame_s * 1000:.1f} ms" if s.first_frame_s is not None else "n/a"
    ffa = f"{s.first_frame_after_audio_s * 1000:.1f} ms" if s.first_frame_after_audio_s is not None else "n/a"
    print(f"first frame: {ff} after the first audio, {ffa} after its audio + lookahead; "
          f"{s.fps:.1f} frames/s ({'realtime' if args.realtime else 'as fast as possible'})")
    return 0
