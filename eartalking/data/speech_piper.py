"""Piper (GPL-3.0) speech source, run as an external tool: never imported by this package.

What: ``PiperSource`` starts one worker process (this venv's python with ``PYTHONPATH`` set to the
pip target folder ``<cache>/tools/piper`` where ``assets_speech.fetch_piper`` installed piper-tts)
and sends it one JSON line per request; the worker loads ``PiperVoice(..., include_alignments=True)``,
writes the audio to a WAV file and answers with the per-phoneme sample counts (22.05 kHz). Phones are
espeak IPA symbols, one per codepoint; stress marks' samples go to the following phone (as for Kokoro)
and the times are shifted by ``offset_s`` (measured against pocketsphinx). Audio resampled to 16 kHz.

Why: another human-sounding voice family (US male "joe"), RTF ~0.1, kept outside the package's
licence boundary by the process boundary.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
import wave
from pathlib import Path

import numpy as np

from eartalking.data.speech import SILENCE, SpeechSource, Utterance, clean_phones, merge_silence, resample

_WORKER = r"""
import json, sys, wave
from piper import PiperVoice, SynthesisConfig
voices = {}
for line in sys.stdin:
    req = json.loads(line)
    try:
        v = voices.get(req["model"])
        if v is None:
            v = voices[req["model"]] = PiperVoice.load(req["model"], include_alignments=True)
        cfg = SynthesisConfig(length_scale=req["length_scale"])
        pcm, phones, sr = [], [], 22050
        for chunk in v.synthesize(req["text"], cfg, include_alignments=True):
            sr = chunk.sample_rate
            pcm.append(chunk.audio_int16_bytes)
            al = chunk.phoneme_alignments or []
            phones.append([[a.phoneme, int(a.num_samples)] for a in al])
        with wave.open(req["wav"], "wb") as w:
            w.setnchannels(1); w.setsampwidth(2); w.setframerate(sr); w.writeframes(b"".join(pcm))
        out = {"ok": True, "sr": sr, "chunks": phones}
    except Exception as e:
        out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(out) + "\n"); sys.stdout.flush()
"""
_STRESS = ("ˈ", "ˌ")
_MARKS = {"^": None, "$": None, "_": None, " ": " ", ",": SILENCE, ".": SILENCE, "!": SILENCE, "?": SILENCE,
          ";": SILENCE, ":": SILENCE, "—": SILENCE}


class PiperSource(SpeechSource):
    """Piper voices found in ``<cache>/voices/piper/*.onnx``; rate -> 1 / length_scale; no pitch control."""

    name = "piper"
    phone_set = "ipa"
    offset_s = -0.033  # median lateness against pocketsphinx over 12 clips (18..100 ms)
    _proc: subprocess.Popen | None = None
    _lock = threading.Lock()

    @property
    def tool_dir(self) -> Path:
        return (self.cache_dir or Path(".")) / "tools" / "piper"

    @property
    def voice_dir(self) -> Path:
        return (self.cache_dir or Path(".")) / "voices" / "piper"

    def available(self) -> tuple[bool, str]:
        if self.cache_dir is None:
            return False, "piper needs the asset cache dir (run `eartalking assets`)"
        if not (self.tool_dir / "piper" / "voice.py").exists():
            return False, f"piper-tts not installed under {self.tool_dir}; run `eartalking assets`"
        if not self.voices():
            return False, f"no piper voices under {self.voice_dir}; run `eartalking assets`"
        return True, ""

    def voices(self) -> list[str]:
        return sorted(p.name[: -len(".onnx")] for p in self.voice_dir.glob("*.onnx"))

    def _worker(self) -> subprocess.Popen:
        if PiperSource._proc is None or PiperSource._proc.poll() is not None:
            env = dict(os.environ, PYTHONPATH=str(self.tool_dir.resolve()), OMP_NUM_THREADS="1")
            PiperSource._proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                                 env=env)
            atexit.register(PiperSource.close)
        return PiperSource._proc

    @staticmethod
    def close() -> None:
        """Stop the worker process (started lazily by the first synth)."""
        p, PiperSource._proc = PiperSource._proc, None
        if p is not None and p.poll() is None:
            p.stdin.close()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()

    def _synth(self, text, voice, rate, pitch, seed):
        with tempfile.TemporaryDirectory() as td, self._lock:
            wav_path = Path(td) / "o.wav"
            proc = self._worker()
            req = {"model": str((self.voice_dir / f"{voice}.onnx").resolve()), "text": text,
                   "length_scale": 1.0 / rate, "wav": str(wav_path)}
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("piper worker exited (is piper-tts installed under the cache's tools/piper?)")
            res = json.loads(line)
            if not res["ok"]:
                raise RuntimeError(f"piper failed on {text[:40]!r}: {res['error']}")
            with wave.open(str(wav_path)) as w:
                sr = w.getframerate()
                pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
        raw, t, carry = [], 0.0, 0.0
        for chunk in res["chunks"]:
            for ph, n in chunk:
                dt = n / sr
                lab = _MARKS.get(ph, ph)
                if ph in _STRESS:
                    carry += dt
                    continue
                if lab == " " and raw and dt < 0.08 or lab is None and raw or ph == "ː" and raw:
                    raw[-1] = (raw[-1][0], t + dt, raw[-1][2])  # short word gap / pad / length mark
                    t += dt
                    continue
                if lab is None or lab == " ":
                    lab = SILENCE
                raw.append((t, t + dt + carry, lab))
                t += dt + carry
                carry = 0.0
        pcm = resample(pcm, sr)
        phones = merge_silence(clean_phones(raw, len(pcm) / 16000, self.offset_s))
        return Utterance(pcm, phones, self.name, voice, text, self.phone_set)
