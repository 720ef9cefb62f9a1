"""Save a labelled PNG contact sheet of a clip folder: per clip its portrait and one open-mouth frame.

Usage: eartalking contact-sheet DIR --out sheet.png [--n 48] [--cols 8] [--seed 0]

What: picks up to ``n`` clips spread over as many identities as possible (round-robin over portraits),
decodes each with ``loader.ClipDataset`` and draws [portrait | frame] with the clip name, split, person,
voice and the frame's controls underneath. The frame shown is the most open mouth (labels) or the middle
frame (no labels). A folder with portraits but no clips gives a sheet of the portraits.

Why: one glance shows whether warps, alignment, colour and labels look right across the corpus.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

MAX_N = 1000
LABEL_H = 40


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=10)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _pick(root: Path, names: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """Round-robin over portraits (identity appearances) so the sheet shows as many faces as possible."""
    by_portrait: dict[str, list[str]] = {}
    for name in names:
        key = name
        js = root / f"{name}.json"
        if js.exists():
            try:
                key = json.loads(js.read_text()).get("portrait", name)
            except (OSError, ValueError):
                pass
        by_portrait.setdefault(str(key), []).append(name)
    queues = [by_portrait[k] for k in sorted(by_portrait)]
    queues = [queues[i] for i in rng.permutation(len(queues))]
    out: list[str] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return sorted(out)


def _caption(clip, t: int) -> list[str]:
    m = clip.meta
    lines = [f"{clip.name} {m.get('split', '')} f{t}/{len(clip.frames)}",
             str(m.get("identity", m.get("portrait", "")))[:42],
             str(m.get("voice_key", m.get("voice", "")))[:42]]
    if clip.labels:
        lab = clip.labels
        get = lambda k: float(lab[k][t]) if k in lab else float("nan")  # noqa: E731
        lines[-1] += f"  o{get('openness'):.2f} b{get('blink'):.1f}"
        lines.append(f"y{get('yaw'):+.0f} p{get('pitch'):+.0f} r{get('roll'):+.0f} e{get('expression'):.2f}")
    return lines


def contact_sheet(root: str | Path, out: str | Path, n: int = 48, cols: int = 8, seed: int = 0) -> int:
    """Write the sheet; returns the number of cells drawn."""
    from PIL import Image, ImageDraw

    from eartalking.data.clipio import square_crop
    from eartalking.data.loader import ClipDataset

    root = Path(root)
    ds = ClipDataset(root)
    rng = np.random.default_rng(seed)
    cells: list[tuple[np.ndarray, np.ndarray | None, list[str]]] = []
    for name in _pick(root, ds.names, n, rng):
        try:
            clip = ds.load(name)
        except Exception as e:  # noqa: BLE001 - a bad clip is reported, never fatal here
            print(f"contact-sheet: skipping {name}: {e}", file=sys.stderr)
            continue
        if clip.labels and "openness" in clip.labels:
            t = int(np.argmax(clip.labels["openness"]))
        else:
            t = len(clip.frames) // 2
        cells.append((clip.portrait, clip.frames[t], _caption(clip, t)))
    if not cells:  # no clips: show the portraits
        for p in sorted((root / "portraits").glob("*.png"))[:n]:
            with Image.open(p) as im:
                cells.append((np.asarray(im.convert("RGB")), None, [p.stem[:42]]))
    if not cells:
        raise FileNotFoundError(f"{root}: no readable clips or portraits")
    s = max(c[0].shape[0] for c in cells)
    cell_w, cell_h = 2 * s + 4, s + LABEL_H
    cols = max(1, min(cols, len(cells)))
    rows = (len(cells) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (24, 24, 24))
    draw, font = ImageDraw.Draw(sheet), _font()
    for k, (portrait, frame, lines) in enumerate(cells):
        x, y = (k % cols) * cell_w, (k // cols) * cell_h
        sheet.paste(Image.fromarray(square_crop(portrait, s)), (x, y))
        if frame is not None:
            sheet.paste(Image.fromarray(square_crop(frame, s)), (x + s + 2, y))
        for j, line in enumerate(lines):
            draw.text((x + 2, y + s + 1 + 9 * j), line, fill=(230, 230, 230), font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return len(cells)


def add_arguments(p) -> None:
    p.add_argument("dir", help="clip folder (a corpus or any folder of MP4 clips)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--n", type=int, default=48, help=f"clips to show (1..{MAX_N}, default 48)")
    p.add_argument("--cols", type=int, default=8, help="cells per row (default 8)")
    p.add_argument("--seed", type=int, default=0, help="which clips are picked")


def run(args) -> int:
    from eartalking.cli import UserError

    if not 1 <= args.n <= MAX_N:
        raise UserError(f"--n must be in 1..{MAX_N}, got {args.n}")
    if not Path(args.dir).is_dir():
        raise UserError(f"{args.dir}: no such folder")
    try:
        k = contact_sheet(args.dir, args.out, args.n, args.cols, args.seed)
    except (FileNotFoundError, ImportError) as e:
        raise UserError(str(e)) from None
    print(f"contact-sheet: {k} cells -> {args.out}")
    return 0
