"""Plots for ``eartalking evaluate`` (matplotlib Agg + Pillow; no display needed).

``write_all(plot_data, folder)`` writes and returns the paths of:
  * ``openness.png``: per case (up to 8 per group), measured mouth openness of the generated frames vs the
    ground-truth openness label (and the measure of the corpus's own video), each z-scored so the shapes
    can be compared (the label is 0..1, the measured inner-lip ratio is not);
  * ``identity.png``: dlib identity distance to the portrait over the long run (sparse samples plus the
    dense windows around frame 10 and frame N), one line per group, same-person line at 0.6; below it the
    per-frame PyTorch streaming cost over the same run (median per bucket of frames);
  * ``controls.png``: eye openness with requested / measured blinks, requested vs measured yaw;
  * ``contact_sheet.png``: per case its portrait and three generated frames (many identities at a glance).
``plot_data[group]`` = ``{"cases": [...], "controls": {...}, "long": {...}, "lead": key}`` from report.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_CASES = 8


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _arr(v) -> np.ndarray:
    return np.array([np.nan if x is None else float(x) for x in (v or [])], np.float64)


def _z(v: np.ndarray) -> np.ndarray:
    f = v[np.isfinite(v)]
    if f.size < 2 or np.std(f) < 1e-9:
        return v - (np.mean(f) if f.size else 0.0)
    return (v - f.mean()) / f.std()


def openness_plot(plot_data: dict, path: Path) -> Path:
    plt = _plt()
    rows = [(g, c) for g, d in plot_data.items() for c in d["cases"][:MAX_CASES]]
    fig, axes = plt.subplots(max(1, len(rows)), 1, figsize=(10, 1.9 * max(1, len(rows))), squeeze=False)
    for ax, (g, c) in zip(axes[:, 0], rows, strict=False):
        t = np.arange(len(c["mouth"])) / 25.0
        ax.plot(t, _z(_arr(c["mouth"])), label="generated: measured openness", color="C0")
        if c["label_openness"] is not None:
            lab = _arr(c["label_openness"])
            ax.plot(np.arange(len(lab)) / 25.0, _z(lab), "--", label="ground-truth label", color="C2")
        if c["gt_mouth"] is not None:
            gt = _arr(c["gt_mouth"])
            ax.plot(np.arange(len(gt)) / 25.0, _z(gt), ":", label="corpus video: measured", color="C1", alpha=0.8)
        r = c["openness_r"]
        ax.set_title(f"[{g}] {c['name']}: {c['caption']}  r = {'n/a' if r is None else f'{r:.2f}'}", fontsize=8)
        ax.legend(loc="upper right", fontsize=6)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds (curves z-scored)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def identity_plot(plot_data: dict, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(12, 6.4), gridspec_kw={"width_ratios": [3, 1]})
    ax = axes[0]
    for i, (g, d) in enumerate(plot_data.items()):
        lg = d["long"]
        xs, ys = lg["sparse"]
        ax[0].plot(xs, ys, ".-", color=f"C{i}", label=f"{g}: {d['lead'][:30]} (sparse samples)")
        for name in ("early", "late"):
            wx, wy = lg[name]
            ax[0].plot(wx, wy, "-", color=f"C{i}", alpha=0.6, lw=0.8)
            ax[1].plot(np.array(wx) - wx[0], wy, "-" if name == "early" else "--", color=f"C{i}",
                       label=f"{g} {name} (from frame {wx[0]})")
    if not any(np.isfinite(_arr(d["long"]["sparse"][1])).any() for d in plot_data.values()):
        ax[0].text(0.5, 0.5, "no face measured in the generated frames", transform=ax[0].transAxes, ha="center")
    for a in ax:
        a.axhline(0.6, color="C3", ls=":", label="same person < 0.6")
        a.grid(alpha=0.3)
        a.legend(fontsize=6, loc="upper right")
    ax[0].set_xlabel("frame of the long continuous run")
    ax[0].set_ylabel("dlib identity distance to portrait")
    ax[1].set_xlabel("frame within window")
    for i, (g, d) in enumerate(plot_data.items()):
        tm = d["long"].get("timing") or {}
        if tm.get("ms_curve"):
            b = tm["ms_curve_bucket"]
            axes[1, 0].plot(np.arange(len(tm["ms_curve"])) * b + b / 2, tm["ms_curve"], color=f"C{i}",
                            label=f"{g}: median ms per frame (buckets of {b})")
    axes[1, 0].set_xlabel("frame of the long continuous run")
    axes[1, 0].set_ylabel("ms per frame (PyTorch streaming)")
    axes[1, 0].set_ylim(bottom=0)
    axes[1, 0].grid(alpha=0.3)
    axes[1, 0].legend(fontsize=6, loc="upper right")
    axes[1, 1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def controls_plot(plot_data: dict, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(len(plot_data), 2, figsize=(12, 2.6 * len(plot_data)), squeeze=False)
    for row, (g, d) in zip(axes, plot_data.items(), strict=True):
        c = d["controls"]
        eye = _arr(c["eye"])
        row[0].plot(np.arange(len(eye)), eye, color="C0", label="eye signal (measured)")
        for b in c["blinks"]:
            row[0].axvline(b, color="C2", alpha=0.5, lw=0.8)
        if c["found"]:
            row[0].plot(c["found"], eye[c["found"]], "v", color="C3", label="measured blinks")
        row[0].set_title(f"[{g}] requested blinks (green lines) on {c.get('lead', 'the lead portrait')}; measured "
                        f"{c.get('all_people', '-')}", fontsize=8)
        row[1].plot(c["yaw_req"], label="requested yaw", color="C2")
        row[1].plot(_arr(c["yaw_meas"]), label="measured yaw", color="C0")
        row[1].set_title(f"[{g}] yaw sweep (degrees)", fontsize=8)
        for a in row:
            a.grid(alpha=0.3)
            a.legend(fontsize=6, loc="upper right")
            a.set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def contact_sheet(plot_data: dict, path: Path, cols: int = 3) -> Path:
    """Tiles of [portrait | 3 generated frames] with a caption, ``cols`` tiles per row."""
    from PIL import Image, ImageDraw

    tiles = []
    for g, d in plot_data.items():
        for c in d["cases"]:
            imgs = [c["portrait"], *c["frames"]]
            tiles.append((f"[{g}] {c['caption']}", imgs))
        lf = d["long"]["frames"]
        if lf:
            t_last = max(lf)
            tiles.append((f"[{g}] long run: frames {min(lf)} and {t_last}", [d["portrait"], lf[min(lf)], lf[t_last]]))
    S = tiles[0][1][0].shape[0] if tiles else 64
    cap = 14
    w, h = 4 * S, S + cap
    rows = max(1, -(-len(tiles) // cols))
    sheet = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (text, imgs) in enumerate(tiles):
        x0, y0 = (i % cols) * w, (i // cols) * h
        for j, im in enumerate(imgs[:4]):
            sheet.paste(Image.fromarray(np.asarray(im, np.uint8)).resize((S, S)), (x0 + j * S, y0))
        draw.text((x0 + 2, y0 + S + 1), text[: w // 6], fill=(0, 0, 0))
    sheet.save(path)
    return path


def write_all(plot_data: dict, folder: str | Path) -> dict[str, str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {"openness": str(openness_plot(plot_data, folder / "openness.png")),
            "identity": str(identity_plot(plot_data, folder / "identity.png")),
            "controls": str(controls_plot(plot_data, folder / "controls.png")),
            "contact_sheet": str(contact_sheet(plot_data, folder / "contact_sheet.png"))}
