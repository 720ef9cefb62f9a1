"""Generate a talking-head training corpus: MP4 clips (H.264 + AAC 16 kHz mono, 25 fps) + labels JSON.

Usage: eartalking corpus --out DIR --clips N --seed S [--assets .cache/assets] [--size 128]
       [--weights espeak=1,kokoro=2,flite=1,allison=1,piper=0.5] [--workers 2] [--wav]

What: for each planned clip (``corpus_plan.plan``: person, voice, sentence, seed) a worker synthesizes the
speech (``speech``), turns its phones into per-frame visemes (``visemes``), draws blinks, head pose and
smiles (``motion``), warps the person's photo frame by frame (``warp.FaceRig``), applies one mild colour
jitter to the whole clip and writes ``clip_XXXX.mp4`` + ``clip_XXXX.json`` (+ ``clip_XXXX.wav`` with
``--wav``, for machines without PyAV). Also ``portraits/<key>.png`` (the clean, neutral, aligned photo the
clip was warped from, plus ``<key>.json`` with its landmarks), ``split.json`` and ``manifest.json``
(layout: docs/INTERFACES.md). Frames per clip = ceil(audio duration * 25).

Why: real talking-head datasets cannot be downloaded here; this makes labelled ones (DESIGN.md §3).
Deterministic for a seed: each clip depends only on its own planned seed, never on worker count or order.
Re-running into the same folder skips clips already written with the same plan (resumable).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eartalking.data.corpus_plan import Job, ceil_frames, plan, summarize, voice_key

FPS = 25
SAMPLE_RATE = 16000
DEFAULT_WEIGHTS = {"espeak": 1.0, "kokoro": 2.0, "flite": 1.0, "allison": 1.0, "piper": 0.5}
LABEL_KEYS = ("openness", "width", "rounding", "blink", "yaw", "pitch", "roll", "expression")
MAX_CLIPS = 100_000


@dataclass
class Tools:
    """What a worker needs: speech sources by name, identity appearances by portrait key, the rig and
    viseme functions, and the sentence lists. ``load_tools`` builds the real ones; tests pass stand-ins.
    Pickled once into each worker process (must be picklable: module-level classes and functions)."""

    sources: dict
    appearances: dict  # portrait key -> faces.Identity
    make_rig: object  # Identity -> object with render(openness, width, blink, yaw, pitch, roll, expression, size)
    viseme_track: object  # (phones, n_frames, fps, phone_set=) -> dict
    train_sentences: list
    eval_sentences: list


def _photo_order(ident) -> tuple:
    """Sort key of one appearance that depends only on the photo: its source path, then (several faces in
    one photo) its embedding rounded to 1e-3, then its crop's landmarks. No dependence on load order."""
    emb = np.round(np.asarray(getattr(ident, "embedding", np.zeros(0)), np.float64).ravel(), 3)
    lm = np.round(np.asarray(getattr(ident, "landmarks", np.zeros(0)), np.float64).ravel(), 1)
    return (str(getattr(ident, "path", "")), tuple(emb.tolist()), tuple(lm.tolist()))


def portrait_keys(identities: list) -> dict[str, object]:
    """Portrait key per appearance: the person id for the first photo of a person, ``id-2``, ``id-3`` ... after.

    "First" is by ``_photo_order`` (source path, then face), never by list order, so a key names the same
    photo in every run and resume whatever order ``faces.load_identities`` returns (keys come back sorted).
    """
    groups: dict[str, list] = {}
    for ident in identities:
        groups.setdefault(re.sub(r"[^A-Za-z0-9_.-]+", "_", str(ident.id)), []).append(ident)
    out: dict[str, object] = {}
    for base in sorted(groups):
        for n, ident in enumerate(sorted(groups[base], key=_photo_order), 1):
            out[base if n == 1 else f"{base}-{n}"] = ident
    return out


def load_tools(assets: str | None, size: int, progress: bool = False) -> Tools:
    from eartalking.data import faces, sentences, speech, visemes, warp

    srcs = {s.name: s for s in speech.available_sources(assets)}
    idents = faces.load_identities(assets, size=size, progress=progress)
    return Tools(srcs, portrait_keys(idents), warp.FaceRig, visemes.viseme_track,
                 list(sentences.TRAIN_SENTENCES), list(sentences.EVAL_SENTENCES))


# ------------------------------------------------------------------------------------------ one clip
def colour_jitter(rng: np.random.Generator) -> dict[str, float | list[float]]:
    """Mild per-clip colour augmentation parameters (the portrait stays clean)."""
    return {"brightness": float(rng.uniform(-12, 12)), "contrast": float(rng.uniform(0.88, 1.12)),
            "saturation": float(rng.uniform(0.85, 1.15)), "tint": rng.uniform(0.96, 1.04, 3).round(4).tolist()}


def apply_colour(frames: np.ndarray, p: dict) -> np.ndarray:
    """Apply ``colour_jitter`` parameters to uint8 [T,H,W,3] frames (same change on every frame)."""
    x = frames.astype(np.float32)
    grey = x.mean(-1, keepdims=True)
    x = grey + (x - grey) * p["saturation"]
    x = (x - 128.0) * p["contrast"] + 128.0 + p["brightness"]
    x *= np.asarray(p["tint"], np.float32)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _render_kwargs(rig) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(rig.render).parameters)
    except (TypeError, ValueError):
        return set()


_RIGS: dict = {}


def _rig(tools: Tools, key: str):
    if key not in _RIGS:
        if len(_RIGS) > 64:
            _RIGS.clear()
        _RIGS[key] = tools.make_rig(tools.appearances[key])
    return _RIGS[key]


def _r(x: float, nd: int = 4) -> float:
    v = round(float(x), nd)
    return 0.0 if v == 0 else v  # no "-0.0" in the labels


def make_clip(job: Job, tools: Tools, out: Path, size: int, wav: bool) -> dict:
    """Synthesize, render and write one clip; returns stats (or ``{"error": ...}``, never raises)."""
    from eartalking.data.clipio import write_mp4, write_wav
    from eartalking.data.motion import sample_motion

    t0, c0 = time.perf_counter(), time.process_time()
    try:
        utt, errors = None, []
        for text in [job.text, *job.alternates]:  # e.g. a recording the aligner cannot align
            try:
                utt = tools.sources[job.source].synth(text, job.voice, job.rate, job.pitch, seed=job.seed)
                break
            except Exception as e:  # noqa: BLE001 - any source failure: try the next text
                errors.append(f"{text[:40]!r}: {type(e).__name__}: {e}")
        if utt is None:
            raise RuntimeError("speech failed for every text: " + " | ".join(errors))
        t_speech = time.perf_counter() - t0
        pcm = np.asarray(utt.pcm, np.float32)
        n_frames = ceil_frames(len(pcm), SAMPLE_RATE, FPS)
        vis = tools.viseme_track(utt.phones, n_frames, FPS, phone_set=getattr(utt, "phone_set", "ipa"))
        rng = np.random.default_rng([job.seed, 1])
        mot = sample_motion(n_frames, rng, FPS, openness=vis["openness"])
        colour = colour_jitter(rng)
        rig = _rig(tools, job.portrait)
        accepts = _render_kwargs(rig)
        ctrl = {**{k: np.asarray(vis[k], np.float32) for k in ("openness", "width", "rounding")}, **mot}
        imgs, lms = [], []
        for t in range(n_frames):
            kw = {k: float(ctrl[k][t]) for k in ctrl if k in accepts or k != "rounding"}
            img, lm = rig.render(size=size, **kw)
            imgs.append(img)
            lms.append(np.asarray(lm, np.float64).reshape(-1).round(1).tolist())
        t_render = time.perf_counter() - t0 - t_speech
        frames = apply_colour(np.stack(imgs), colour)
        name = job.name
        write_mp4(out / f"{name}.mp4", frames, pcm, FPS, SAMPLE_RATE,
                  metadata={"comment": "EARTalking synthetic training clip (generated)"})
        if wav:
            write_wav(out / f"{name}.wav", pcm, SAMPLE_RATE)
        labels = {
            "fps": FPS, "sample_rate": SAMPLE_RATE, "num_frames": n_frames, "num_samples": len(pcm),
            "size": size, "portrait": job.portrait, "identity": job.identity,
            "identity_source": getattr(tools.appearances[job.portrait], "path", ""),
            "speech_source": job.source, "voice": job.voice, "voice_key": voice_key(job.source, job.voice),
            "phone_set": getattr(utt, "phone_set", "ipa"), "text": utt.text, "split": job.split,
            "augment": {"colour": {k: (_r(v) if isinstance(v, float) else v) for k, v in colour.items()}},
            "job": job.to_dict(),
            "frames": [{**{k: _r(ctrl[k][t]) for k in LABEL_KEYS}, "phoneme": str(vis["phoneme"][t])}
                       for t in range(n_frames)],
            "landmarks": lms,
        }
        tmp = out / f".{name}.json.tmp"
        tmp.write_text(json.dumps(labels, ensure_ascii=False, separators=(",", ":")) + "\n")
        tmp.replace(out / f"{name}.json")  # written last: a clip is done when its JSON exists
        return {"name": name, "source": job.source, "frames": n_frames, "seconds": time.perf_counter() - t0,
                "cpu_s": time.process_time() - c0,
                "speech_s": t_speech, "render_s": t_render}
    except Exception as e:  # a bad utterance or photo must not stop a 200-clip run
        return {"name": job.name, "source": job.source, "error": f"{type(e).__name__}: {e}"}


def _done(out: Path, job: Job) -> bool:
    js, mp4 = out / f"{job.name}.json", out / f"{job.name}.mp4"
    if not (js.exists() and mp4.exists()):
        return False
    try:
        old = dict(json.loads(js.read_text()).get("job") or {})
        # alternates are only a fallback: a clip made from the planned text is valid whatever they are
        return {**old, "alternates": None} == {**job.to_dict(), "alternates": None}
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------------------------ worker pool
_W: dict = {}


def _init_worker(tools: Tools, out: str, size: int, wav: bool) -> None:
    _W.update(tools=tools, out=Path(out), size=size, wav=wav)


def _work(job: Job) -> dict:
    return make_clip(job, _W["tools"], _W["out"], _W["size"], _W["wav"])


def _photo_hash(ident) -> str:
    """Short hash of ``_photo_order`` (path + face): tells two faces of one photo apart in the sidecar."""
    return hashlib.sha1(repr(_photo_order(ident)).encode()).hexdigest()[:12]


def _portrait_kept(pdir: Path, key: str, ident) -> bool:
    """True when portraits/<key>.png + .json already hold this very photo (a resume: leave them alone).
    Raises RuntimeError when they hold a different photo: rewriting would silently relabel finished clips."""
    js, png = pdir / f"{key}.json", pdir / f"{key}.png"
    if not (js.exists() and png.exists()):
        return False
    try:
        old = json.loads(js.read_text())
    except (OSError, ValueError):
        return False  # unreadable sidecar: rewrite both
    same_photo = (str(old.get("identity")) == str(ident.id) and old.get("path") == getattr(ident, "path", "")
                  and old.get("photo_hash", _photo_hash(ident)) == _photo_hash(ident))
    if not same_photo:
        raise RuntimeError(f"{js}: portrait key {key!r} already names photo {old.get('path')!r} "
                           f"(identity {old.get('identity')}), this run maps it to {getattr(ident, 'path', '')!r}; "
                           f"refusing to overwrite (the clips labelled {key!r} were rendered from the old one)")
    return True


def write_portraits(tools: Tools, keys: list[str], out: Path, size: int) -> None:
    """portraits/<key>.png (neutral: mouth closed, eyes open, frontal, no smile) + <key>.json (landmarks).

    Write-if-absent: an existing portrait of the same photo is kept byte for byte; one of another photo
    stops the run (``_portrait_kept``)."""
    from PIL import Image

    pdir = out / "portraits"
    pdir.mkdir(parents=True, exist_ok=True)
    neutral = tools.viseme_track([], 1, FPS)
    for key in keys:
        if _portrait_kept(pdir, key, tools.appearances[key]):
            continue
        rig = _rig(tools, key)
        kw = {"openness": 0.0, "width": float(neutral["width"][0]), "blink": 0.0, "yaw": 0.0, "pitch": 0.0,
              "roll": 0.0, "expression": 0.0}
        if "rounding" in _render_kwargs(rig):
            kw["rounding"] = float(neutral["rounding"][0])
        img, lm = rig.render(size=size, **kw)
        Image.fromarray(np.asarray(img, np.uint8)).save(pdir / f"{key}.png")
        ident = tools.appearances[key]
        (pdir / f"{key}.json").write_text(json.dumps({
            "identity": str(ident.id), "source": getattr(ident, "source", ""), "path": getattr(ident, "path", ""),
            "photo_hash": _photo_hash(ident), "size": size,
            "landmarks": np.asarray(lm, np.float64).round(2).tolist()}) + "\n")


def _provenance(assets: str | None) -> dict:
    if not assets:
        return {"note": "no asset cache: bundled fixtures only"}
    p = Path(assets) / "provenance.json"
    if not p.exists():
        return {"note": f"{p} not found"}
    try:
        rows = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        return {"note": f"{p} unreadable: {e}"}
    extra = {k: rows[k] for k in ("note", "summary", "created") if isinstance(rows, dict) and k in rows}
    rows = rows.get("files", []) if isinstance(rows, dict) else rows
    summary: dict[str, dict] = {}
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict):
            continue
        key = f"{r.get('package', '?')}=={r.get('version', '?')}"
        e = summary.setdefault(key, {"kind": r.get("kind", "?"), "licence": r.get("licence", "?"), "files": 0})
        e["files"] += 1
    return {"file": str(p), **extra, "packages": summary}


def _timing(done: list[dict]) -> dict:
    """Mean wall seconds per clip (total, speech, render), CPU seconds and frames per source (worker stats)."""
    out = {}
    for src in sorted({r["source"] for r in done}):
        rs = [r for r in done if r["source"] == src]
        out[src] = {"clips": len(rs), **{k: round(float(np.mean([r[k] for r in rs])), 2)
                                         for k in ("seconds", "cpu_s", "speech_s", "render_s", "frames")}}
    return out


def generate(out: str | Path, clips: int, seed: int, assets: str | None = None, size: int = 128,
             weights: dict[str, float] | None = None, workers: int = 2, wav: bool = False,
             progress: bool = True, tools: Tools | None = None) -> dict:
    """Write a corpus into ``out``; returns the manifest (also written as manifest.json)."""
    from tqdm import tqdm

    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    if tools is None:
        tools = load_tools(assets, size, progress=progress)
    voices = {n: list(s.voices()) for n, s in tools.sources.items()}
    prompts = {n: [p[1] for p in s.prompts()] for n, s in tools.sources.items() if hasattr(s, "prompts")}
    people: dict[str, list[str]] = {}
    for key, ident in tools.appearances.items():
        people.setdefault(str(ident.id), []).append(key)
    jobs, split = plan(clips, seed, voices, people, tools.train_sentences, tools.eval_sentences, weights, prompts)
    write_portraits(tools, sorted({j.portrait for j in jobs} | set(tools.appearances)), out, size)
    todo = [j for j in jobs if not _done(out, j)]
    results: list[dict] = []
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="corpus", unit="clip", disable=not progress)
    if workers <= 1 or len(todo) <= 1:
        for j in todo:
            results.append(make_clip(j, tools, out, size, wav))
            bar.update()
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers inherit it: one thread each
        ctx = mp.get_context("spawn")  # no fork after ONNX Runtime / dlib threads exist
        # the workers get the very identities the portraits were made from (not a reload that could differ)
        with ctx.Pool(min(workers, len(todo)), _init_worker, (tools, str(out), size, wav)) as pool:
            for r in pool.imap_unordered(_work, todo, chunksize=1):
                results.append(r)
                bar.update()
    bar.close()
    failed = {r["name"]: r["error"] for r in results if "error" in r}
    for name, err in sorted(failed.items()):
        print(f"corpus: {name} failed: {err}", file=sys.stderr)
    ok = [j for j in jobs if j.name not in failed]
    split.train = [n for n in split.train if n not in failed]
    split.eval = [n for n in split.eval if n not in failed]
    (out / "split.json").write_text(json.dumps(split.to_dict(), indent=1) + "\n")
    done = [r for r in results if "error" not in r]
    secs = [r["seconds"] for r in done]
    manifest = {
        "format": "eartalking-corpus/1", "clips": len(ok), "requested_clips": clips, "seed": seed,
        "settings": {"size": size, "fps": FPS, "sample_rate": SAMPLE_RATE, "weights": weights, "wav": wav,
                     "assets": str(assets) if assets else None, "workers": workers},
        "sources": {n: {"voices": len(v)} for n, v in sorted(voices.items())},
        "identities": {"people": len(people), "portraits": len(tools.appearances)},
        "counts": summarize(ok),
        "failed": failed,
        "timing": {"elapsed_s": round(time.perf_counter() - t_start, 1), "generated": len(done),
                   "mean_clip_s": round(float(np.mean(secs)), 2) if secs else None,
                   "frames": int(sum(r["frames"] for r in done)), "per_source": _timing(done)},
        "provenance": _provenance(assets),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# ------------------------------------------------------------------------------------------ CLI
def parse_weights(text: str) -> dict[str, float]:
    from eartalking.cli import UserError

    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, val = part.partition("=")
        try:
            w = float(val)
        except ValueError:
            raise UserError(f"--weights: {part!r} is not NAME=NUMBER (e.g. espeak=1,kokoro=2)") from None
        if not (w >= 0 and math.isfinite(w)):
            raise UserError(f"--weights: weight of {name!r} must be a finite number >= 0, got {val}")
        out[name.strip()] = w
    if not out:
        raise UserError("--weights is empty")
    return out


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--clips", type=int, default=200, help="number of clips (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same corpus")
    p.add_argument("--assets", default=None, help="asset cache from `eartalking assets` (default: none, "
                   "espeak/flite + the two bundled faces only)")
    p.add_argument("--size", type=int, default=128, help="frame size in pixels (even, 32..512; default 128)")
    p.add_argument("--weights", default="espeak=1,kokoro=2,flite=1,allison=1,piper=0.5",
                   help="speech source weights NAME=W,... (unavailable sources are skipped)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--wav", action="store_true", help="also write clip_XXXX.wav (for readers without PyAV)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from eartalking.cli import UserError

    if not 1 <= args.clips <= MAX_CLIPS:
        raise UserError(f"--clips must be in 1..{MAX_CLIPS}, got {args.clips}")
    if args.size % 2 or not 32 <= args.size <= 512:
        raise UserError(f"--size must be even and in 32..512, got {args.size}")
    if not 1 <= args.workers <= 64:
        raise UserError(f"--workers must be in 1..64, got {args.workers}")
    if args.assets and not Path(args.assets).is_dir():
        raise UserError(f"--assets {args.assets}: no such folder (run `eartalking assets` first)")
    weights = parse_weights(args.weights)
    from eartalking.data.speech import available_sources

    have = {s.name for s in available_sources(args.assets)}
    if not any(weights.get(n, 0) > 0 for n in have):
        raise UserError(f"no available speech source has weight > 0: available {sorted(have)}, weights {weights}")
    m = generate(args.out, args.clips, args.seed, args.assets, args.size, weights, args.workers, args.wav,
                 progress=not args.quiet)
    t = m["timing"]
    print(f"corpus: {m['clips']} clips in {args.out} ({t['generated']} generated in {t['elapsed_s']} s, "
          f"mean {t['mean_clip_s']} s/clip); per source {m['counts']['per_source']}; "
          f"{m['identities']['people']} people, {m['counts']['voices_used']} voices used")
    if m["failed"]:
        print(f"corpus: {len(m['failed'])} clips failed (see manifest.json 'failed')", file=sys.stderr)
        return 1
    return 0
