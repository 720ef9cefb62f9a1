"""Real human speech: the Asterisk "Allison" prompts, aligned offline with pocketsphinx.

What: ``AllisonSource`` exposes one voice (``allison``) whose texts are fixed: ``prompts()`` lists
(prompt id, transcript); ``synth(text)`` returns the recording whose transcript (or prompt id) is
``text``. Audio: G.722 -> 16 kHz WAV with ffmpeg (Debian's, else imageio-ffmpeg's), cached under
``<cache>/voices/allison/wav16k/``. Phones: pocketsphinx 5.1.1 forced alignment (CMU phone set,
``SIL`` mapped to silence). ``align(pcm, text)`` is also used to check other sources' offsets.

Why: users speak with human voices; these 568 prompts (25 min, CC-BY-SA-3.0) are the only real
recordings obtainable offline (PLATFORM-NOTES). Prompts whose words the aligner's dictionary lacks,
or that are tones/non-speech, are left out.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import threading
import wave
from pathlib import Path

import numpy as np

from eartalking.data.speech import SAMPLE_RATE, SILENCE, SpeechSource, Utterance, clean_phones, merge_silence

_SIL = {"SIL", "+NSN+", "+SPN+", "+BREATH+", "+COUGH+", "+UM+", "+UH+", "+NOISE+"}
_decoder = None
_dec_lock = threading.Lock()


def _get_decoder():
    global _decoder
    if _decoder is None:
        from pocketsphinx import Decoder

        _decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
    return _decoder


def normalize_words(text: str) -> list[str]:
    """Lower-case words for the aligner's dictionary (punctuation removed, apostrophes kept)."""
    return [w for w in re.sub(r"[^a-z' ]+", " ", text.lower().replace("-", " ")).split() if w.strip("'")]


def in_dictionary(text: str) -> bool:
    d = _get_decoder()
    words = normalize_words(text)
    return bool(words) and all(d.lookup_word(w) is not None for w in words)


def align(pcm: np.ndarray, text: str) -> list[tuple[float, float, str]]:
    """Forced-align 16 kHz float32 ``pcm`` to ``text`` -> CMU phones (start_s, end_s, phone), ``_`` for silence.

    Raises ValueError when a word is not in the dictionary or alignment fails.
    """
    words = normalize_words(text)
    raw = (np.clip(pcm, -1, 1) * 32767).astype(np.int16).tobytes()
    with _dec_lock:
        d = _get_decoder()
        missing = [w for w in words if d.lookup_word(w) is None]
        if missing or not words:
            raise ValueError(f"words not in the aligner's dictionary: {missing or text!r}")
        out = []
        try:
            d.set_align_text(" ".join(words))
            d.start_utt()
            d.process_raw(raw, full_utt=True)
            d.end_utt()
            d.set_alignment()
            d.start_utt()
            d.process_raw(raw, full_utt=True)
            d.end_utt()
            for word in d.get_alignment():
                for ph in word:
                    name = SILENCE if ph.name in _SIL else ph.name.lower()
                    out.append((ph.start / 100.0, (ph.start + ph.duration) / 100.0, name))
        except RuntimeError as e:  # pocketsphinx: no path through the audio; start afresh next time
            global _decoder
            _decoder = None
            raise ValueError(f"alignment failed for {text[:60]!r}: {e}") from e
    if not any(p != SILENCE for _, _, p in out):
        raise ValueError(f"alignment produced no phones for {text!r}")
    return out


def ffmpeg_exe() -> str:
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError as e:
        raise RuntimeError("no ffmpeg: apt-get install ffmpeg or pip install imageio-ffmpeg") from e


class AllisonSource(SpeechSource):
    """One real voice with fixed texts; ``rate``/``pitch`` must stay 1.0 (augment downstream)."""

    name = "allison"
    phone_set = "cmu"
    offset_s = 0.0
    _prompt_cache: dict = {}

    @property
    def root(self) -> Path:
        return (self.cache_dir or Path(".")) / "voices" / "allison"

    def available(self) -> tuple[bool, str]:
        if self.cache_dir is None:
            return False, "allison needs the asset cache dir (run `eartalking assets`)"
        if not (self.root / "sounds" / "asterisk-core-sounds-en" / "core-sounds-en.txt.gz").exists():
            return False, f"allison recordings missing under {self.root}; run `eartalking assets`"
        try:
            import pocketsphinx  # noqa: F401
        except ImportError:
            return False, "pocketsphinx not installed (pip install pocketsphinx==5.1.1)"
        return True, ""

    def voices(self) -> list[str]:
        return ["allison"]

    def prompts(self) -> list[tuple[str, str]]:
        """(prompt id, transcript) of every usable recording (speech only, all words in the dictionary)."""
        key = str(self.root)
        if key not in self._prompt_cache:
            lines = gzip.open(self.root / "sounds" / "asterisk-core-sounds-en" / "core-sounds-en.txt.gz",
                              "rt", errors="replace").read().splitlines()
            out = []
            for line in lines:
                if ":" not in line or line.startswith(";"):
                    continue
                pid, text = (x.strip() for x in line.split(":", 1))
                if not text or "[" in text or not (self.root / "sounds" / f"{pid}.g722").exists():
                    continue
                if in_dictionary(text):
                    out.append((pid, text))
            self._prompt_cache[key] = out
        return self._prompt_cache[key]

    def wav16k(self, pid: str) -> np.ndarray:
        """The prompt's recording as float32 [samples] at 16 kHz (converted once, then cached)."""
        dst = self.root / "wav16k" / f"{pid}.wav"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_suffix(".tmp.wav")
            p = subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "g722", "-i",
                                str(self.root / "sounds" / f"{pid}.g722"), "-ar", str(SAMPLE_RATE), "-ac", "1",
                                str(tmp)], capture_output=True, text=True, timeout=60)
            if p.returncode != 0:
                raise RuntimeError(f"ffmpeg could not convert {pid}.g722: {p.stderr.strip()[-200:]}")
            tmp.replace(dst)
        with wave.open(str(dst)) as w:
            return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0

    def _synth(self, text, voice, rate, pitch, seed):
        if rate != 1.0 or pitch != 1.0:
            raise ValueError("allison: recordings have fixed rate and pitch; augment downstream")
        table = dict(self.prompts())
        pid = text if text in table else next((k for k, v in table.items() if v == text), None)
        if pid is None:
            raise ValueError(f"allison: no recording for {text[:60]!r}; choose from prompts()")
        pcm = self.wav16k(pid)
        phones = merge_silence(clean_phones(align(pcm, table[pid]), len(pcm) / SAMPLE_RATE, self.offset_s))
        return Utterance(pcm, phones, self.name, voice, table[pid], self.phone_set, meta={"prompt_id": pid})


def measure_offset(u: Utterance, max_lag_s: float = 0.15) -> float:
    """Lateness (seconds, + = the source's phone times are late) of ``u.phones`` against pocketsphinx.

    Both phone lists become mouth-openness curves at 1 kHz (``visemes.viseme_track``); the lag that
    maximises their correlation is the offset. Raises ValueError when the text cannot be aligned.
    """
    from eartalking.data.visemes import viseme_track

    ref = align(u.pcm, u.text)
    n = int(u.duration * 1000)
    a = viseme_track(u.phones, n, 1000.0, u.phone_set, sigma_s=0.01)["openness"].astype(np.float64)
    b = viseme_track(ref, n, 1000.0, "cmu", sigma_s=0.01)["openness"].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    lags = range(-int(max_lag_s * 1000), int(max_lag_s * 1000) + 1, 2)

    def corr(k: int) -> float:
        x, y = (a[k:], b[: n - k]) if k >= 0 else (a[: n + k], b[-k:])
        return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9))

    return max(lags, key=corr) / 1000.0
