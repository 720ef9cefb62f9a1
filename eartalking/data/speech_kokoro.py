"""Kokoro-82M (int8 ONNX) speech source: 28 English voices with per-phoneme durations.

What: text -> espeak-ng IPA (``--ipa --tie=^``) -> Kokoro symbols -> ONNX Runtime -> 24 kHz audio,
plus the graph's internal ``/encoder/Clip_output_0`` (one duration per token, in units of 600
samples at 24 kHz; sum * 600 = audio length), exposed as an extra output when the session is built.
Audio resampled to 16 kHz.

Why: a human-sounding neural voice with exact phone durations (PLATFORM-NOTES). Two corrections
make the durations into labels: a stress mark's duration belongs to the following vowel, and the
times run ~65 ms late against the audio (measured; PLATFORM-NOTES said ~50 ms) (``offset_s``).

Assets (from ``assets_speech.fetch_kokoro``, never downloaded here): ``<cache>/voices/kokoro/``
``model.onnx``, ``vocab.json``, ``voices/<name>.bin`` (float32 [510, 256]; row = token count - 1).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import numpy as np

from eartalking.data.speech import SILENCE, SpeechSource, Utterance, clean_phones, merge_silence, resample

# espeak tie sequences -> Kokoro's single symbols; other ties are simply dropped.
_TIES = {"a^ɪ": "I", "a^ʊ": "W", "e^ɪ": "A", "ɔ^ɪ": "Y", "o^ʊ": "O", "ə^ʊ": "Q", "d^ʒ": "ʤ", "t^ʃ": "ʧ"}
_CHARS = {"r": "ɹ", "ɬ": "l", "ɐ": "ə", "x": "k", "ɚ": "ɚ", "ɫ": "l"}
_STRESS = ("ˈ", "ˌ")
_PUNCT = set(";:,.!?—…\"()“” ")
# Kokoro single symbols back to IPA phone labels (what visemes.py reads).
_LABEL = {"I": "aɪ", "W": "aʊ", "A": "eɪ", "Y": "ɔɪ", "O": "oʊ", "Q": "əʊ", "ʤ": "dʒ", "ʧ": "tʃ"}


class KokoroSource(SpeechSource):
    """Kokoro-82M; voices af_*/am_* (US) and bf_*/bm_* (UK). rate -> the graph's ``speed``; no pitch control."""

    name = "kokoro"
    phone_set = "ipa"
    offset_s = -0.065  # median lateness against pocketsphinx over 16 clips of 16 voices (52..96 ms)
    _sessions: dict = {}
    _lock = threading.Lock()

    @property
    def root(self) -> Path:
        return (self.cache_dir or Path(".")) / "voices" / "kokoro"

    def available(self) -> tuple[bool, str]:
        if self.cache_dir is None:
            return False, "kokoro needs the asset cache dir (run `eartalking assets`)"
        missing = [p for p in ("model.onnx", "vocab.json") if not (self.root / p).exists()]
        if missing or not list((self.root / "voices").glob("*.bin")):
            return False, f"kokoro assets missing under {self.root} ({missing or 'voices'}); run `eartalking assets`"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False, "onnxruntime not installed"
        return True, ""

    def voices(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "voices").glob("*.bin"))

    def _session(self):
        key = str(self.root)
        if key not in self._sessions:
            import onnx
            import onnxruntime as ort

            model = onnx.load(str(self.root / "model.onnx"))
            model.graph.output.append(onnx.helper.make_tensor_value_info("/encoder/Clip_output_0",
                                                                         onnx.TensorProto.FLOAT, None))
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            vocab = json.loads((self.root / "vocab.json").read_text())["vocab"]
            self._sessions[key] = (sess, vocab)
        return self._sessions[key]

    @staticmethod
    def phonemize(text: str, voice: str) -> str:
        """espeak-ng IPA with ties for the voice's accent (US for a*, UK for b*), Kokoro symbols, words by space."""
        lang = "en-gb" if voice.startswith("b") else "en-us"
        p = subprocess.run(["espeak-ng", "-q", "--ipa", "--tie=^", "-v", lang, text],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"espeak-ng --ipa failed: {p.stderr.strip()[-200:]}")
        # espeak puts each clause on its own line; keep clause breaks as commas.
        ipa = ", ".join(line.strip() for line in p.stdout.splitlines() if line.strip())
        for a, b in _TIES.items():
            ipa = ipa.replace(a, b)
        ipa = ipa.replace("^", "")
        if not voice.startswith("b"):
            ipa = ipa.replace("ɜː", "ɜɹ")
        ipa = "".join(_CHARS.get(c, c) for c in ipa)
        end = text.strip()[-1:] if text.strip()[-1:] in ".!?" else "."
        return re.sub(r"\s+", " ", ipa).strip() + end

    def _synth(self, text, voice, rate, pitch, seed):
        sess, vocab = self._session()
        syms = [c for c in self.phonemize(text, voice) if c in vocab]
        syms = syms[:510]
        ids = np.array([[0] + [vocab[c] for c in syms] + [0]], np.int64)
        style = np.fromfile(self.root / "voices" / f"{voice}.bin", np.float32).reshape(-1, 256)
        style = style[min(max(len(syms) - 1, 0), len(style) - 1)][None]  # row = phoneme count - 1
        with self._lock:
            audio, dur = sess.run(["audio", "/encoder/Clip_output_0"],
                                  {"tokens": ids, "style": style, "speed": np.array([rate], np.float32)})
        audio = np.asarray(audio, np.float32).reshape(-1)
        d = np.asarray(dur, np.float64).reshape(-1)
        if d.size != ids.shape[1]:
            raise RuntimeError(f"kokoro durations have {d.size} values for {ids.shape[1]} tokens")
        frames = np.round(d).astype(np.int64) if np.allclose(d, np.round(d)) else d
        unit = 600 / 24000  # seconds per duration unit; sum(frames) * 600 == len(audio)
        labels = [SILENCE] + syms + [SILENCE]
        raw, t, carry = [], 0.0, 0.0
        for lab, n in zip(labels, frames, strict=True):
            dt = float(n) * unit
            if lab in _STRESS:  # stress mark: its time belongs to the following vowel
                carry += dt
                continue
            if lab == "ː" or (lab == " " and dt < 0.08):
                # a length mark lengthens the previous phone; a short word gap is no pause
                if raw:
                    raw[-1] = (raw[-1][0], t + dt, raw[-1][2])
                t += dt
                continue
            if lab in _PUNCT:
                lab = SILENCE
            start = t
            t += dt + carry
            carry = 0.0
            raw.append((start, t, _LABEL.get(lab, lab)))
        pcm = resample(audio, 24000)
        phones = clean_phones(raw, len(pcm) / 16000, self.offset_s)
        return Utterance(pcm, merge_silence(phones), self.name, voice, text, self.phone_set,
                         meta={"kokoro_symbols": "".join(syms)})
