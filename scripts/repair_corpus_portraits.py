"""Repair the "portrait" label of corpus clips whose person has several portraits, without regenerating clips.

Why: before the fix in ``eartalking/data/corpus.py`` (keys by photo path, write-if-absent), the ``id-N``
portrait keys depended on the order ``faces.load_identities`` returned a person's photos. A resumed run
re-keyed them and rewrote every ``portraits/<key>.png``, so clips finished by an earlier run now name a
sibling portrait of the same person that is a different photo from the one they were rendered from.

What: for every ``clip_XXXX.json`` whose identity has >= 2 portraits (by the ``identity`` field of
``portraits/*.json``), decode frame 0 of ``clip_XXXX.mp4``, take its dlib embedding
(``eartalking.evaluate.dlibface``) and each candidate portrait's, and pick the candidate the clip was
rendered from:

* when exactly one candidate's source photo (``path`` in its sidecar) equals the clip's own
  ``identity_source`` (the photo the clip's worker actually warped): that one, unless frame 0 is nearer
  to another candidate by more than ``--margin`` (then the nearest; never happened on /work/main/corpus);
* several candidates cut from that one photo: the one whose portrait image frame 0 is closest to in
  mean RGB difference, when the runner-up is >= ``PIXEL_RATIO`` times farther (different crops);
* otherwise (no path match, or no clear pixel verdict): the nearest by embedding among those candidates,
  when it beats the labelled one by more than ``--margin`` (or the label is not among them).

The source path settles near-identical photos (distances within ~0.01 of each other) and portraits dlib
cannot embed; the embedding settles several faces cut from one photo.

A changed clip gets ``"portrait": <new key>`` and keeps the old value as ``"portrait_original"`` (only set
once: a second run never overwrites the backup). The ``job`` record is not touched. Clips, videos and
portrait images are never rewritten. ``--check`` only reports (the verification pass): for every
multi-portrait clip, whether frame 0 is nearest to its named portrait.

Usage: python scripts/repair_corpus_portraits.py CORPUS [--dry-run] [--check] [--margin 0.1] [--report F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

PIXEL_RATIO = 2.0  # runner-up / best mean pixel difference that counts as a clear pixel verdict


def frame0(mp4: Path) -> np.ndarray:
    """First decoded frame of ``mp4``, uint8 [S,S,3]."""
    import av

    with av.open(str(mp4)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def embedding_of(img: np.ndarray) -> np.ndarray | None:
    """dlib embedding float64 [128] of the face in ``img``; None if no face is found."""
    from eartalking.evaluate import dlibface

    rect = dlibface.FaceFinder().find(img)
    return None if rect is None else dlibface.embed(dlibface.landmarks(img, rect))


def portrait_index(corpus: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(identity -> sorted portrait keys, portrait key -> source photo path) from ``portraits/*.json``."""
    by_id: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for js in sorted((corpus / "portraits").glob("*.json")):
        meta = json.loads(js.read_text())
        by_id.setdefault(str(meta.get("identity")), []).append(js.stem)
        paths[js.stem] = str(meta.get("path", ""))
    return by_id, paths


def choose(cands: list[str], dist: dict[str, float], labelled: str, own_path: str, paths: dict[str, str],
           margin: float, pix: dict[str, float] | None = None) -> tuple[str, str]:
    """(portrait key, reason) for one clip. ``dist``: frame-0 embedding distance to the candidates that have
    one; ``pix``: frame-0 mean absolute RGB difference (0-255) to each candidate portrait image."""
    own = [k for k in cands if paths.get(k) == own_path]  # portraits of the photo the clip was warped from
    best = min(dist, key=dist.get) if dist else None
    if len(own) == 1:
        k = own[0]
        if best is not None and k in dist and dist[k] - dist[best] > margin:
            return best, "embedding (overrides source path)"
        return k, "source path" if k != labelled else "kept"
    pix = pix or {}
    if len(own) > 1 and all(k in pix for k in own):  # several faces of one photo: the crops differ clearly
        ranked = sorted(own, key=pix.get)
        if pix[ranked[1]] >= PIXEL_RATIO * pix[ranked[0]]:
            return ranked[0], "pixels" if ranked[0] != labelled else "kept"
    pool = [k for k in (own or cands) if k in dist]  # no path match, or no clear pixel winner
    if not pool:
        return labelled, "kept (no evidence)"
    b = min(pool, key=dist.get)
    if b != labelled and (labelled not in pool or dist[labelled] - dist[b] > margin):
        return b, "embedding"
    return labelled, "kept"


def scan(corpus: Path, margin: float, write: bool) -> list[dict]:
    """One row per multi-portrait clip (see module doc); rewrites labels when ``write``."""
    from PIL import Image

    from eartalking.evaluate import dlibface

    by_id, paths = portrait_index(corpus)
    cache: dict[str, np.ndarray | None] = {}

    def pemb(key: str) -> np.ndarray | None:
        if key not in cache:
            try:
                cache[key] = dlibface.portrait_embedding(corpus / "portraits" / f"{key}.png")
            except Exception:  # a portrait without a detectable face cannot be a candidate
                cache[key] = None
        return cache[key]

    rows = []
    for js in sorted(corpus.glob("clip_*.json")):
        d = json.loads(js.read_text())
        cands = by_id.get(str(d.get("identity")), [])
        if len(cands) < 2:
            continue
        row = {"clip": js.stem, "portrait": d["portrait"], "identity_source": d.get("identity_source", "")}
        mp4 = js.with_suffix(".mp4")
        img = frame0(mp4) if mp4.exists() else None
        e = embedding_of(img) if img is not None else None
        dist = {k: float(np.linalg.norm(e - pemb(k))) for k in cands if e is not None and pemb(k) is not None}
        pix = {}
        for k in cands:
            p = np.asarray(Image.open(corpus / "portraits" / f"{k}.png").convert("RGB"))
            if img is not None and p.shape == img.shape:
                pix[k] = float(np.abs(img.astype(np.float32) - p.astype(np.float32)).mean())
        row["dist"] = {k: round(v, 3) for k, v in sorted(dist.items())}
        row["pixels"] = {k: round(v, 1) for k, v in sorted(pix.items())}
        choice, reason = choose(cands, dist, d["portrait"], row["identity_source"], paths, margin, pix)
        nearest = min(dist, key=dist.get) if dist else None
        row.update(choice=choice, reason=reason, nearest=nearest,
                   path_matches=paths.get(choice) == row["identity_source"])
        if write and choice != d["portrait"]:
            d.setdefault("portrait_original", d["portrait"])
            d["portrait"] = choice
            tmp = js.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n")  # as corpus.py
            tmp.replace(js)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="report what would change, write nothing")
    ap.add_argument("--check", action="store_true", help="verification pass only (implies --dry-run)")
    ap.add_argument("--margin", type=float, default=0.1, help="embedding-distance gap that overrides a label")
    ap.add_argument("--report", type=Path, help="write the per-clip rows as JSON here")
    a = ap.parse_args(argv)
    if not (a.corpus / "portraits").is_dir():
        print(f"repair: {a.corpus}/portraits not found (not a corpus directory)", file=sys.stderr)
        return 2
    rows = scan(a.corpus, a.margin, write=not (a.dry_run or a.check))
    changed = [r for r in rows if r["choice"] != r["portrait"]]
    scored = [r for r in rows if r["nearest"] is not None]
    if a.report:
        a.report.write_text(json.dumps(rows, indent=1) + "\n")
    if a.check:
        off = [r for r in scored if r["nearest"] != r["portrait"]]

        def wrong(r: dict) -> bool:  # named portrait clearly not the one frame 0 shows, by both measures
            pix = r["pixels"]
            pix_ok = bool(pix) and min(pix, key=pix.get) == r["portrait"]
            emb_ok = r["dist"].get(r["portrait"], np.inf) - r["dist"][r["nearest"]] <= a.margin
            return not (pix_ok or emb_ok)

        bad = [r for r in off if wrong(r)]
        unmatched = [r["clip"] for r in rows if not r["path_matches"]]
        print(f"check: {len(rows)} multi-portrait clips, {len(scored)} with a face in frame 0; "
              f"embedding-nearest is the named portrait: {len(scored) - len(off)}/{len(scored)}; "
              f"named portrait clearly wrong (> {a.margin} embedding gap and not pixel-nearest): {len(bad)}; "
              f"named portrait's photo == identity_source: {len(rows) - len(unmatched)}/{len(rows)}")
        for r in off:
            print(f"  {'WRONG' if r in bad else 'tie  '} {r['clip']}: named {r['portrait']} "
                  f"emb {r['dist'].get(r['portrait'])} pix {r['pixels'].get(r['portrait'])}; embedding-nearest "
                  f"{r['nearest']} emb {r['dist'][r['nearest']]} pix {r['pixels'].get(r['nearest'])}")
        if unmatched:
            print(f"  named portrait's photo != identity_source: {unmatched}")
        return 0 if not bad else 1
    verb = "would change" if a.dry_run else "changed"
    reasons: dict[str, int] = {}
    for r in changed:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    print(f"repair: {len(rows)} multi-portrait clips, {verb} {len(changed)} {reasons}")
    for r in changed:
        print(f"  {r['clip']}: {r['portrait']} ({r['dist'].get(r['portrait'])}) -> {r['choice']} "
              f"({r['dist'].get(r['choice'])}) [{r['reason']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
