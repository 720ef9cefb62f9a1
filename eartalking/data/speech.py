"""One interface for every speech source of the training corpus.

What: ``Utterance`` (16 kHz float32 mono PCM + phone timings), ``SpeechSource`` (the interface),
the espeak-ng (libespeak-ng via ctypes) and flite (CLI) sources, an npz cache of synthesized
utterances, and ``available_sources(cache_dir)`` which returns every source whose assets are
present (Kokoro: ``speech_kokoro``; Piper, run as an external process: ``speech_piper``;
Allison human recordings: ``speech_allison``).

Why: the corpus needs many voices, human-sounding ones included (DESIGN.md §3), each with phone
timings that line up with the audio, so visemes (``visemes.py``) can drive the mouth.

Usage: ``src = available_sources(".cache/assets")[0]; u = src.synth("Hello there.", src.voices()[0])``

Shapes: ``Utterance.pcm`` float32 [samples] at 16 kHz in -1..1; ``phones`` list of
(start_s, end_s, phone), monotonic, non-overlapping, within ``len(pcm) / 16000``.
Timing offsets measured against the pocketsphinx aligner are corrected inside each source.
"""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
import tempfile
import threading
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
SILENCE = "_"  # phone label for pauses (every source maps its own pause symbols onto this)


@dataclass
class Utterance:
    """A synthesized or recorded utterance with phone timings (see module docstring for shapes)."""

    pcm: np.ndarray
    phones: list[tuple[float, float, str]]
    source: str
    voice: str
    text: str
    phone_set: str  # "ipa" | "cmu"
    meta: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling to ``sr_out`` (float32 [n] -> float32 [n * sr_out / sr_in]), clipped to -1..1."""
    if sr_in == sr_out:
        return np.clip(x, -1.0, 1.0).astype(np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(sr_in, sr_out)
    # the polyphase filter can overshoot full-scale peaks slightly: clip back into -1..1
    return np.clip(resample_poly(x, sr_out // g, sr_in // g), -1.0, 1.0).astype(np.float32)


def clean_phones(phones: list[tuple[float, float, str]], duration: float, shift: float = 0.0,
                 min_len: float = 1e-3) -> list[tuple[float, float, str]]:
    """Shift by ``shift`` seconds, clip to [0, duration], make monotonic and drop empty phones.

    A leading gap is filled with silence; adjacent phones are made contiguous (end = next start).
    """
    out: list[tuple[float, float, str]] = []
    t_prev = 0.0
    for s, e, p in phones:
        s, e = max(s + shift, t_prev), min(e + shift, duration)
        if e - s < min_len:
            continue
        if not out and s > min_len:
            out.append((0.0, s, SILENCE))
        elif not out:
            s = 0.0
        elif s > out[-1][1]:
            out[-1] = (out[-1][0], s, out[-1][2])
        out.append((s, e, p))
        t_prev = e
    return out


class SpeechSource:
    """Interface of a speech source. Subclasses set ``name``, ``phone_set`` and implement ``_synth``.

    ``synth`` caches results as npz under ``cache_dir/speech_cache/<source>/`` when a cache dir is given.
    """

    name = "base"
    phone_set = "ipa"
    supports_pitch = False  # sources without a pitch control ignore ``pitch`` (and cache it as 1.0)

    def __init__(self, cache_dir: str | Path | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def available(self) -> tuple[bool, str]:
        return True, ""

    def voices(self) -> list[str]:
        raise NotImplementedError

    def _synth(self, text: str, voice: str, rate: float, pitch: float, seed: int) -> Utterance:
        raise NotImplementedError

    def _cache_path(self, text: str, voice: str, rate: float, pitch: float, seed: int) -> Path | None:
        if self.cache_dir is None:
            return None
        key = f"{self.name}|{voice}|{text}|{rate:.4f}|{pitch:.4f}|{seed}"
        h = hashlib.sha1(key.encode()).hexdigest()[:20]
        return self.cache_dir / "speech_cache" / self.name / f"{h}.npz"

    def synth(self, text: str, voice: str, rate: float = 1.0, pitch: float = 1.0, seed: int = 0) -> Utterance:
        """Speak ``text`` with ``voice`` at relative ``rate`` and ``pitch`` (1.0 = the voice's default)."""
        if voice not in self.voices():
            raise ValueError(f"{self.name}: unknown voice {voice!r}; choose one of {self.voices()[:8]}...")
        if not self.supports_pitch:
            pitch = 1.0
        path = self._cache_path(text, voice, rate, pitch, seed)
        if path is not None and path.exists():
            return load_utterance(path)
        u = self._synth(text, voice, rate, pitch, seed)
        if path is not None:
            save_utterance(u, path)
        return u


def save_utterance(u: Utterance, path: str | Path) -> None:
    """Write an Utterance to ``path`` (npz; written to a temp name then renamed, so readers never see half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, pcm=u.pcm.astype(np.float32),
             times=np.array([(s, e) for s, e, _ in u.phones], np.float64).reshape(-1, 2),
             labels=np.array([p for _, _, p in u.phones], dtype=str),
             info=np.array([u.source, u.voice, u.text, u.phone_set], dtype=str))
    tmp.replace(path)


def load_utterance(path: str | Path) -> Utterance:
    with np.load(path) as z:
        src, voice, text, ps = (str(x) for x in z["info"])
        phones = [(float(s), float(e), str(p)) for (s, e), p in zip(z["times"], z["labels"], strict=True)]
        return Utterance(z["pcm"].astype(np.float32), phones, src, voice, text, ps)


# ----------------------------------------------------------------------------- espeak-ng (ctypes)

class _EspeakEvent(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_EV_WORD, _EV_END, _EV_MSG_TERMINATED, _EV_PHONEME = 1, 5, 6, 7
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_EspeakEvent))


class EspeakSource(SpeechSource):
    """espeak-ng through libespeak-ng: audio + PHONEME events (IPA) with exact sample positions.

    Voices are ``<language>+<variant>``; rate scales the default 175 wpm, pitch the default 50.
    Its phoneme events run late against the audio: 12 ms median against pocketsphinx over 57 clips
    (PLATFORM-NOTES said ~20 ms); ``offset_s`` corrects that.
    """

    name = "espeak"
    phone_set = "ipa"
    supports_pitch = True
    offset_s = -0.012
    LANGS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan")
    VARIANTS = ("", "+m1", "+m3", "+m7", "+f1", "+f2", "+f4", "+klatt", "+klatt4", "+Andy", "+Annie", "+belinda",
                "+david", "+linda", "+max", "+paul")
    _lib = None
    _lock = threading.Lock()
    _rate = 22050

    def _load(self):
        if EspeakSource._lib is None:
            lib = ctypes.CDLL("libespeak-ng.so.1")
            sr = lib.espeak_Initialize(2, 0, None, 0x0003)  # SYNCHRONOUS; phoneme events in IPA
            if sr <= 0:
                raise RuntimeError("espeak_Initialize failed")
            EspeakSource._rate = sr
            EspeakSource._lib = lib
        return EspeakSource._lib

    _copy: str | None = None  # private copy of the library file (see _fresh_lib)
    _fresh = None

    def _fresh_lib(self):
        """A freshly loaded private copy of libespeak-ng for one utterance (~5 ms), so the output depends
        only on the input: espeak-ng keeps pitch-flutter state across utterances (the same call gave 13896,
        13929, 13909 samples in turn; terminate + initialize hangs). Falls back to the shared library when
        the copy cannot be made. Call with ``_lock`` held."""
        import _ctypes
        import os
        import shutil
        import tempfile

        if EspeakSource._fresh is not None:
            EspeakSource._fresh.espeak_Terminate()
            _ctypes.dlclose(EspeakSource._fresh._handle)
            EspeakSource._fresh = None
        if EspeakSource._copy is None:
            shared = self._load()  # noqa: F841 - mapped, so its path shows in /proc/self/maps
            try:
                with open("/proc/self/maps") as f:
                    path = next(ln.split()[-1] for ln in f if "libespeak-ng.so" in ln)
                d = tempfile.mkdtemp(prefix="espeak-")
                EspeakSource._copy = shutil.copy(path, os.path.join(d, "libespeak-ng-private.so"))
            except (OSError, StopIteration):
                EspeakSource._copy = ""
        if not EspeakSource._copy:
            return self._load()
        lib = ctypes.CDLL(EspeakSource._copy, mode=os.RTLD_LOCAL)
        if lib.espeak_Initialize(2, 0, None, 0x0003) <= 0:
            raise RuntimeError("espeak_Initialize failed")
        EspeakSource._fresh = lib
        return lib

    def available(self) -> tuple[bool, str]:
        try:
            self._load()
            return True, ""
        except OSError as e:
            return False, f"libespeak-ng not loadable ({e}); apt-get install libespeak-ng1"

    def voices(self) -> list[str]:
        return [lang + var for lang in self.LANGS for var in self.VARIANTS]

    def _synth(self, text, voice, rate, pitch, seed):
        chunks: list[np.ndarray] = []
        events: list[tuple[int, str]] = []

        def cb(wav, n, ev):
            if n > 0 and wav:
                chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            i = 0
            while ev[i].type != 0:
                e = ev[i]
                if e.type == _EV_PHONEME:
                    events.append((e.sample, e.id.decode("utf-8", "replace").strip("\x00")))
                elif e.type in (_EV_END, _EV_MSG_TERMINATED):
                    events.append((e.sample, SILENCE))
                elif e.type == _EV_WORD:
                    events.append((e.sample, " "))  # word start marker (not a phone)
                i += 1
            return 0

        c_cb = _CALLBACK(cb)
        with self._lock:
            lib = self._fresh_lib()
            lib.espeak_SetSynthCallback(c_cb)
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak: voice {voice!r} not found")
            lib.espeak_SetParameter(1, int(round(175 * rate)), 0)  # espeakRATE wpm
            lib.espeak_SetParameter(3, int(np.clip(round(50 * pitch), 0, 99)), 0)  # espeakPITCH
            data = text.encode("utf-8") + b"\x00"
            lib.espeak_Synth(data, len(data), 0, 1, 0, 0, None, None)  # POS_CHARACTER, espeakCHARS_AUTO
        pcm22 = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(1, np.float32)
        sr = self._rate
        n = len(pcm22)
        raw: list[tuple[float, float, str]] = []
        evs = sorted([(s, p) for s, p in events if p != " "], key=lambda x: x[0])
        for (s, p), nxt in zip(evs, evs[1:] + [(n, SILENCE)], strict=True):
            label = SILENCE if p in ("", "_", "_:", "_!", "||", "|") or p.startswith("_") else p
            raw.append((s / sr, nxt[0] / sr, label))
        pcm = resample(pcm22, sr)
        return Utterance(pcm, merge_silence(clean_phones(raw, len(pcm) / SAMPLE_RATE, self.offset_s)),
                         self.name, voice, text, self.phone_set)


def merge_silence(phones: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Merge runs of consecutive silence phones into one."""
    out: list[tuple[float, float, str]] = []
    for s, e, p in phones:
        if out and p == SILENCE and out[-1][2] == SILENCE:
            out[-1] = (out[-1][0], e, SILENCE)
        else:
            out.append((s, e, p))
    return out


# ----------------------------------------------------------------------------- flite (CLI)

class FliteSource(SpeechSource):
    """flite voices via the apt binary; ``-psdur`` prints each phone's end time (CMU-style set, ``pau``).

    flite has no pitch option; ``rate`` sets ``duration_stretch`` = 1 / rate. Output resampled to 16 kHz.
    """

    name = "flite"
    phone_set = "cmu"
    offset_s = -0.006  # median lateness against pocketsphinx over 16 clips (aligns flite with the human labels)
    VOICES = ("slt", "rms", "awb", "kal16")

    def available(self) -> tuple[bool, str]:
        try:
            subprocess.run(["flite", "-lv"], capture_output=True, timeout=10, check=True)
            return True, ""
        except (OSError, subprocess.SubprocessError) as e:
            return False, f"flite binary not usable ({e}); apt-get install flite"

    def voices(self) -> list[str]:
        return list(self.VOICES)

    def _synth(self, text, voice, rate, pitch, seed):
        with tempfile.TemporaryDirectory() as td:
            wav_path = Path(td) / "o.wav"
            p = subprocess.run(["flite", "-voice", voice, "--setf", f"duration_stretch={1.0 / rate:.4f}",
                                "-t", text, "-o", str(wav_path), "-psdur"],
                               capture_output=True, text=True, timeout=120)
            if p.returncode != 0 or not wav_path.exists():
                raise RuntimeError(f"flite -voice {voice} failed: {p.stderr.strip()[-200:]}")
            with wave.open(str(wav_path)) as w:
                sr = w.getframerate()
                pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
        raw, t0 = [], 0.0
        for tok in p.stdout.split():
            if ":" not in tok:
                continue
            ph, end = tok.rsplit(":", 1)
            end_f = float(end)
            raw.append((t0, end_f, SILENCE if ph == "pau" else ph))
            t0 = end_f
        pcm = resample(pcm, sr)
        return Utterance(pcm, merge_silence(clean_phones(raw, len(pcm) / SAMPLE_RATE, self.offset_s)),
                         self.name, voice, text, self.phone_set)


# ----------------------------------------------------------------------------- registry

def all_sources(cache_dir: str | Path | None = None) -> list[SpeechSource]:
    """Every speech source this package knows, available or not (``cache_dir`` = the asset cache)."""
    from eartalking.data.speech_allison import AllisonSource
    from eartalking.data.speech_kokoro import KokoroSource
    from eartalking.data.speech_piper import PiperSource

    return [EspeakSource(cache_dir), FliteSource(cache_dir), KokoroSource(cache_dir), PiperSource(cache_dir),
            AllisonSource(cache_dir)]


def available_sources(cache_dir: str | Path | None = None) -> list[SpeechSource]:
    """The sources whose tools and assets are present; synthesized clips are cached under ``cache_dir``."""
    return [s for s in all_sources(cache_dir) if s.available()[0]]
