"""Evaluate a checkpoint on held-out people, voices and sentences (and on training people, for contrast).

Usage: eartalking evaluate --checkpoint checkpoints/tiny --data CORPUS --json OUT.json --plots DIR
       [--long-frames 10000] [--train-long-frames N] [--clips 24] [--train-clips 6] [--control-frames 250]
       [--human 8] [--device auto] [--temperature 0] [--assets DIR]

What, per group (``heldout`` = the split's held-out identities; ``train`` = a few training clips), all with
the PyTorch streaming generator (``generate_eval``) and measured by ``measure`` (dlib, trained by nobody here):
  * lip-sync: each eval clip's audio (held-out sentences, half of them held-out voices, incl. the human
    ``allison`` recordings) is spoken by the clip's portrait; r between measured mouth openness and the
    clip's ground-truth openness labels, the label-free audio-envelope r, per speech source, for held-out
    voices and for the human voice separately. Held-out people no eval clip shows speak an eval clip's
    audio too. The human eval clips are topped up to ``--human`` cases with held-out allison prompts
    synthesized from the asset cache (aligned, with viseme labels). ``gt_video_*`` = the same measure on the corpus's
    own video (the ceiling measure reaches on ground truth).
  * control following: blinks requested at chosen frames on every person of the group (hit = a measured
    blink within -3..+5 frames; the rate pools all people) and a yaw sweep on the lead portrait (r between
    requested and measured yaw).
  * identity: ONE continuous generation of ``--long-frames`` frames (audio looped); dlib distance to
    the portrait in ~50-frame windows around frame 10 and frame N (frames with no face count as misses),
    plus a sparse curve over the whole run; its per-frame wall times give the cost at frame 5,000 vs 50.
  * tokenizer PSNR: clip frames through encode/decode with the clip's portrait as the reference.
Writes the JSON (every number, the issue-10 targets with pass/fail) and plots: ``openness.png``,
``identity.png``, ``controls.png``, ``contact_sheet.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from eartalking.cli import UserError
from eartalking.evaluate import cases as casesmod
from eartalking.evaluate import generate_eval as ge

SAME = 0.6
WINDOW = 50
#: (key, description, comparison, threshold); values come from the ``heldout`` group
TARGETS = (
    ("tokenizer_psnr_db", "tokenizer PSNR on held-out frames (dB)", ">=", 25.0),
    ("lipsync_r_heldout_voices", "lip-sync r (openness) on held-out sentences and TTS voices", ">=", 0.6),
    ("lipsync_r_human", "lip-sync r (openness) on held-out human (allison) recordings", ">=", 0.6),
    ("blink_hit_rate", "requested blinks measured as blinks", ">=", 0.8),
    ("identity_frac_early", "frames with identity distance < 0.6 around frame 10", ">=", 0.9),
    ("identity_frac_late", "frames with identity distance < 0.6 around frame N", ">=", 0.9),
    ("stream_cost_ratio", "per-frame PyTorch streaming cost at frame 5,000 / frame 50", "<=", 1.10),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--data", required=True, help="corpus folder with split.json and portraits/")
    p.add_argument("--json", required=True, help="write all numbers here")
    p.add_argument("--plots", required=True, help="folder for the PNG plots")
    p.add_argument("--long-frames", type=int, default=10000, help="frames of the long continuous run (default 10000)")
    p.add_argument("--train-long-frames", type=int, default=None,
                   help="frames of the training identity's long run (default: --long-frames)")
    p.add_argument("--clips", type=int, default=24, help="held-out eval clips to use at most (default 24)")
    p.add_argument("--train-clips", type=int, default=None, help="training clips to use (default min(clips, 6))")
    p.add_argument("--control-frames", type=int, default=None,
                   help="frames of each control run: a blink track per person of the group and a yaw sweep on "
                        "the lead portrait (default min(250, max(50, long-frames)))")
    p.add_argument("--human", type=int, default=8,
                   help="held-out human-voice cases to measure (default 8): the human eval clips among --clips, "
                        "topped up with the longest held-out prompts of the human (allison) recordings from the "
                        "asset cache; a corpus has few human eval clips, and r over 2 short clips is noise. At most "
                        "16: the prompts after those are scripts/code_mean_sweep.py's validation set")
    p.add_argument("--assets", default=None, help="asset cache for the held-out human prompts (default: the corpus "
                   "manifest's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = leave as is)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy, default)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (used when --temperature > 0)")


def _check(args: argparse.Namespace) -> None:
    if not 10 <= args.long_frames <= 1_000_000:
        raise UserError(f"--long-frames must be in 10..1000000, got {args.long_frames}")
    if args.train_long_frames is not None and not 10 <= args.train_long_frames <= 1_000_000:
        raise UserError(f"--train-long-frames must be in 10..1000000, got {args.train_long_frames}")
    if not 1 <= args.clips <= 10_000:
        raise UserError(f"--clips must be in 1..10000, got {args.clips}")
    if args.train_clips is not None and not 0 <= args.train_clips <= 10_000:
        raise UserError(f"--train-clips must be in 0..10000, got {args.train_clips}")
    if args.control_frames is not None and not 20 <= args.control_frames <= 100_000:
        raise UserError(f"--control-frames must be in 20..100000, got {args.control_frames}")
    data = Path(args.data)
    if not (data / "split.json").is_file():
        raise UserError(f"{data}/split.json not found: --data must be a corpus folder (eartalking corpus)")
    if not 0.0 <= args.temperature <= 10.0:
        raise UserError(f"--temperature must be in 0..10, got {args.temperature}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {args.device!r}")


# ------------------------------------------------------------------------------------------- stats
def _mean(v) -> float | None:
    v = [x for x in v if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _median(v) -> float | None:
    v = [x for x in v if x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else None


def _r_stats(rows: list[dict]) -> dict:
    return {"clips": len(rows), "frames": int(sum(r["frames"] for r in rows)),
            "openness_r_mean": _mean(r["openness_r"] for r in rows),
            "openness_r_median": _median(r["openness_r"] for r in rows),
            "audio_envelope_r_mean": _mean(r["audio_envelope_r"] for r in rows),
            "gt_video_openness_r_mean": _mean(r["gt_video_openness_r"] for r in rows)}


def lipsync_summary(rows: list[dict]) -> dict:
    """Per-case rows -> r statistics: all, per source, held-out TTS voices, seen voices, human."""
    by_src = sorted({r["source"] for r in rows})
    return {"all": _r_stats(rows),
            "by_source": {s: _r_stats([r for r in rows if r["source"] == s]) for s in by_src},
            "heldout_voices": _r_stats([r for r in rows if r["heldout_voice"] and not r["human"]]),
            "seen_voices": _r_stats([r for r in rows if not r["heldout_voice"] and not r["human"]]),
            "human": _r_stats([r for r in rows if r["human"]])}


# ------------------------------------------------------------------------------------------ parts
def run_case(model, case: casesmod.Case, emb, args) -> tuple[dict, dict]:
    """Generate + measure one lip-sync case -> (JSON row, extras for plots: curves and a few frames)."""
    from eartalking.evaluate.measure import measure_frames

    T = case.n_frames
    g = ge.generate(model, case.portrait, case.pcm, T, temperature=args.temperature, seed=args.seed)
    frames = g.stack()
    labels = ge.utterance_labels(case.labels, T)
    m = measure_frames(frames, case.pcm, portrait=emb, labels=labels, every=2)
    s, lab = m["summary"], m["labels"] or {}
    gt = None
    if case.video is not None:  # the corpus's own video: what measure reaches on ground truth
        gt = measure_frames(case.video, case.pcm, labels=labels, every=10**9)
    ident = [x for x in m["curves"]["identity_distance"] if x is not None]
    row = {"case": case.name, "clip": case.clip, "portrait": case.portrait_key, "identity": case.identity,
           "source": case.source, "voice": case.voice_key, "heldout_voice": case.heldout_voice,
           "human": case.human, "text": case.text, "frames": T, "face_frames": s["face_frames"],
           "openness_r": lab.get("openness_r"), "audio_envelope_r": s["lipsync_r"],
           "audio_envelope_lag": s["lipsync_lag_frames"],
           "gt_video_openness_r": (gt["labels"] or {}).get("openness_r") if gt else None,
           "gt_video_audio_envelope_r": gt["summary"]["lipsync_r"] if gt else None,
           "gt_video_blinks": gt_blinks(gt, case.labels) if gt else None,
           "identity_mean": _mean(ident),
           "identity_frac_below": float(np.mean(np.array(ident) < SAME)) if ident else None,
           "tokenizer_psnr_db": None, "ms_per_frame": float(np.median(g.ms))}
    pick = [T // 4, T // 2, (3 * T) // 4]
    extra = {"name": case.name, "portrait": case.portrait, "frames": [frames[i] for i in pick],
             "mouth": m["curves"]["mouth_openness"], "label_openness": (lab.get("curves") or {}).get("openness"),
             "gt_mouth": gt["curves"]["mouth_openness"] if gt else None, "openness_r": row["openness_r"],
             "caption": f"{case.identity[:22]} | {case.source}{' (held-out voice)' if case.heldout_voice else ''}"}
    return row, extra


def blink_peaks(blink: np.ndarray) -> list[int]:
    """Frames where a labelled blink (0 open .. 1 closed) peaks at >= 0.5: local maxima over +-2 frames."""
    b = np.nan_to_num(np.asarray(blink, np.float64), nan=0.0)
    return [t for t in range(len(b)) if b[t] >= 0.5 and b[t] == b[max(0, t - 2):t + 3].max()]


def _near(b: int, f: int) -> bool:
    """The hit rule: a measured blink at frame f counts for a requested/labelled one at b if f is in b-3..b+5."""
    return b - 3 <= f <= b + 5


def blink_hits(requested: list[int], found: list[int]) -> list[int]:
    """Requested/labelled blink frames with a measured blink near them (``_near``)."""
    return [b for b in requested if any(_near(b, f) for f in found)]


def blink_unmatched(requested: list[int], found: list[int]) -> list[int]:
    """Measured blink frames near no requested/labelled blink (``_near``): the detector's extra events."""
    return [f for f in found if not any(_near(b, f) for b in requested)]


def gt_blinks(gt: dict, labels: dict | None) -> dict | None:
    """The blink detector on the corpus's own video: labelled blinks and how many it finds (its ceiling)."""
    if not labels or "blink" not in labels:
        return None
    peaks = blink_peaks(labels["blink"])
    return {"labelled": len(peaks), "found": len(blink_hits(peaks, gt["summary"]["blink_frames"]))}


def gt_blinks_by_identity(rows: list[dict], identities: list[str]) -> list[tuple[str, dict]]:
    """Per person, the blink detector on their eval clips' own video (``gt_blinks`` of each case row, summed) ->
    [(identity, {"labelled", "found"})] in ``identities`` order (0 / 0 where no clip of theirs has a labelled
    blink). Beside a person's requested-blink hits it says whether this instrument sees that face's blinks at all
    (glasses, eyes already narrow) in the video the model was trained to imitate."""
    out = []
    for ident in identities:
        gts = [r["gt_video_blinks"] for r in rows if r.get("identity") == ident and r.get("gt_video_blinks")]
        out.append((ident, {"labelled": sum(g["labelled"] for g in gts), "found": sum(g["found"] for g in gts)}))
    return out


def blink_track(model, portrait, emb, pcm, T: int, seed: int = 0, temperature: float = 0.0) -> tuple[dict, dict]:
    """``portrait`` speaks ``pcm`` (looped) for T frames with a blink requested every 25 frames from frame 12 and
    the eyes explicitly open elsewhere (``generate_eval.control_track``) -> (JSON: requested / hits / unrequested
    / face frames, curves: eye signal, requested and measured blink frames). A hit is a measured blink -3..+5
    frames from a requested one (``blink_hits``)."""
    from eartalking.evaluate.measure import measure_frames

    blinks = list(range(12, T - 6, 25))
    video = ge.generate(model, portrait, pcm, T, *ge.control_track(T, blinks=blinks), loop=True,
                        temperature=temperature, seed=seed).stack()
    m = measure_frames(video, None, portrait=emb, every=10**9)
    found = m["summary"]["blink_frames"]
    dips = blink_dips(m["curves"]["eye_signal"], blinks)
    out = {"frames": T, "requested": len(blinks), "requested_frames": blinks, "hits": len(blink_hits(blinks, found)),
           "measured_frames": found, "unrequested": len(blink_unmatched(blinks, found)),
           "face_frames": m["summary"]["face_frames"], "dips": dips, "dip_median": _median(dips)}
    return out, {"eye": m["curves"]["eye_signal"], "blinks": blinks, "found": found}


def blink_dips(eye: list, requested: list[int]) -> list[float | None]:
    """How deep the eye signal (``measure``'s ``eye_signal`` curve, None where no face) dips at each requested
    blink: its minimum over frames t-1..t+2 / its median over t-25..t+25 (None where either has no face). The
    detector fires below ``signals.BLINK_DROP`` (0.86), so a miss near 0.9 is a faint blink and one near 1.0
    no blink at all."""
    e = np.array([np.nan if v is None else v for v in eye], np.float64)
    out: list[float | None] = []
    for t in requested:
        low, mid = e[max(0, t - 1):t + 3], e[max(0, t - 25):t + 26]
        ok_low, ok_mid = low[np.isfinite(low)], mid[np.isfinite(mid)]
        out.append(float(ok_low.min() / np.median(ok_mid)) if len(ok_low) and len(ok_mid) else None)
    return out


def run_controls(model, people: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray]], T: int, seed: int,
                 temperature: float = 0.0) -> tuple[dict, dict]:
    """Control following. ``people`` = (portrait key, portrait uint8 [S,S,3], its embedding or None, pcm float
    [samples]), one per person of the group, the lead first. Requested blinks on every person (``blink_track``,
    pooled: the target is hits / requested over all of them, since a blink that shows on one face and not on
    another is the common failure), a yaw sweep on the lead -> (JSON, curves of the lead for the plot)."""
    from eartalking.evaluate.measure import measure_frames

    if not people:
        raise ValueError("run_controls needs at least one person")
    per, curves = [], {}
    for key, portrait, emb, pcm in people:
        b, c = blink_track(model, portrait, emb, pcm, T, seed, temperature)
        per.append({"portrait": key, **b})
        curves = curves or c
    requested, hits = sum(b["requested"] for b in per), sum(b["hits"] for b in per)
    _, portrait, emb, pcm = people[0]
    yaw = 20.0 * np.sin(2 * np.pi * np.arange(T) / 100.0)
    labels = {"frames": [{"yaw": float(v)} for v in yaw]}
    my = measure_frames(ge.generate(model, portrait, pcm, T, *ge.control_track(T, yaw=yaw), loop=True,
                                    temperature=temperature, seed=seed).stack(),
                        None, portrait=emb, labels=labels, every=10**9)
    meas = np.array([np.nan if v is None else v for v in my["curves"]["yaw"]])
    ok = np.isfinite(meas)
    slope = float(np.polyfit(yaw[ok], meas[ok], 1)[0]) if ok.sum() >= 3 else None
    out = {"blink": {"people": len(per), "frames_each": T, "requested": requested, "hits": hits,
                     "hit_rate": hits / requested if requested else None,
                     "unrequested": sum(b["unrequested"] for b in per),
                     "face_frames": sum(b["face_frames"] for b in per),
                     "people_all_hit": sum(b["hits"] == b["requested"] for b in per),
                     "people_none_hit": sum(b["hits"] == 0 for b in per), "per_person": per},
           "yaw": {"frames": T, "amplitude_deg": 20.0, "period_frames": 100, "r": my["labels"]["yaw_r"],
                   "slope_measured_per_requested": slope, "face_frames": my["summary"]["face_frames"],
                   "portrait": people[0][0]}}
    curves |= {"yaw_req": yaw.tolist(), "yaw_meas": my["curves"]["yaw"], "lead": people[0][0],
               "all_people": f"{hits}/{requested} over {len(per)} people"}
    return out, curves


def _window(center: int, n: int) -> tuple[int, int]:
    lo = min(max(0, center - WINDOW // 2), max(0, n - WINDOW))
    return lo, min(n, lo + WINDOW)


def _median_ms(ms: np.ndarray, center: int) -> tuple[float | None, list[int]]:
    lo, hi = _window(center, len(ms))
    return (float(np.median(ms[lo:hi])) if hi > lo else None), [lo, hi]


def run_long(model, portrait, emb, pcm, N: int, seed: int, desc: str, temperature: float = 0.0) -> tuple[dict, dict]:
    """ONE continuous generation of N frames (audio looped) -> identity windows, sparse curve, timings."""
    from tqdm import tqdm

    from eartalking.evaluate.measure import measure_frames

    early, late = _window(10, N), _window(N - 1, N)
    every = max(1, N // 100)
    keep = lambda t: early[0] <= t < early[1] or late[0] <= t < late[1] or t % every == 0  # noqa: E731
    with tqdm(total=N, desc=f"long run ({desc})", unit="frame", leave=False) as bar:
        g = ge.generate(model, portrait, pcm, N, keep=keep, loop=True, temperature=temperature, seed=seed,
                        progress=bar)
    out: dict = {"frames": N, "audio_loop_frames": math.ceil(len(pcm) / 640)}
    kept = sorted(g.frames)  # one measure pass over every kept frame (the windows may overlap)
    m = measure_frames(g.stack(kept), None, portrait=emb, every=1)
    dist = dict(zip(kept, (np.nan if v is None else v for v in m["curves"]["identity_distance"]), strict=True))
    curve: dict = {}
    for name, (lo, hi) in (("early", early), ("late", late)):
        d = np.array([dist[t] for t in range(lo, hi)])
        fin = d[np.isfinite(d)]
        out[name] = {"frames": [lo, hi], "center": 10 if name == "early" else N,
                     "mean": float(fin.mean()) if fin.size else None,
                     "frac_below": float(np.mean(np.nan_to_num(d, nan=np.inf) < SAME)) if emb is not None else None,
                     "frac_below_of_faces": float(np.mean(fin < SAME)) if fin.size else None,
                     "face_frames": int(fin.size)}
        curve[name] = (list(range(lo, hi)), d.tolist())
    sparse = [t for t in kept if t % every == 0]
    curve["sparse"] = (sparse, [dist[t] for t in sparse])
    ms50, f50 = _median_ms(g.ms, 50)
    ms5k, f5k = _median_ms(g.ms, min(5000, N - 1))
    p50, p5k = (float(np.percentile(g.ms[f[0]:f[1]], 25)) for f in (f50, f5k))
    bucket = max(1, N // 50)
    out["timing"] = {"ms_at_50": ms50, "frames_50": f50, "ms_at_5000": ms5k, "frames_5000": f5k,
                     "ratio_5000_vs_50": ms5k / ms50 if ms50 and ms5k else None,
                     "ratio_p25_5000_vs_50": p5k / p50 if p50 > 0 else None,
                     "ms_median": float(np.median(g.ms)), "ms_mean": float(np.mean(g.ms)),
                     "ms_curve_bucket": bucket,
                     "ms_curve": [float(np.median(g.ms[i:i + bucket])) for i in range(0, N, bucket)],
                     "note": "wall ms per frame (audio chunk + step + render + copy): median (and 25th percentile, "
                             "less sensitive to other load on the machine) in 50-frame windows; ms_curve = median "
                             "per bucket of frames"}
    out["sparse"] = {"every": every, "mean": _mean(curve["sparse"][1]),
                     "frac_below": _mean([float(v < SAME) for v in curve["sparse"][1] if math.isfinite(v)])}
    curve["frames"] = {t: g.frames[t] for t in (early[0], late[1] - 1)}
    curve["timing"] = out["timing"]
    return out, curve


def tokenizer_psnr(model, cases: list[casesmod.Case], per_clip: int = 16) -> dict:
    """PSNR of clip frames reconstructed by the tokenizer with the clip's portrait as reference.

    A tokenizer with ``eye_code`` is given what its image side was trained on: the encoder's tokens with the
    clip's blink label written into the eye cells (open where unlabelled; ``train/eye_code.py``)."""
    import torch

    from eartalking.train.eye_code import tokenizer_eye_code

    tok, dev = model.tokenizer, model.device
    vals, codes = [], set()
    with torch.no_grad():
        for c in cases:
            if c.video is None:
                continue
            idx = np.linspace(0, len(c.video) - 1, min(per_clip, len(c.video))).round().astype(int)
            img = torch.from_numpy(c.video[idx]).to(dev).permute(0, 3, 1, 2).float() / 255.0
            ref = ge.portrait_tensor(c.portrait, dev).expand(len(idx), -1, -1, -1)
            t = tok.encode(img)
            blink = np.asarray((c.labels or {}).get("blink", [np.nan] * len(c.video)), np.float32)[idx]
            t = tokenizer_eye_code(tok, t, torch.from_numpy(blink).to(dev))
            rec = tok.decode(t, tok.reference(ref)).clamp(0, 1)
            mse = ((rec - img) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
            p = (10 * torch.log10(1.0 / mse)).cpu().numpy()
            c.psnr = float(p.mean())
            vals += p.tolist()
            codes |= set(t.flatten().cpu().tolist())
    K = model.cfg.tokenizer.codebook_size
    return {"psnr_db": _mean(vals), "frames": len(vals), "codes_used": len(codes), "codebook_size": K,
            "codebook_usage": len(codes) / K if vals else None}


# ------------------------------------------------------------------------------------------ driver
def evaluate_group(model, group: str, cases: list[casesmod.Case], args, embed) -> tuple[dict, dict]:
    from tqdm import tqdm

    res: dict = {"tokenizer": tokenizer_psnr(model, cases)}
    rows, extras = [], []
    for c in tqdm(cases, desc=f"lip-sync ({group})", unit="clip"):
        row, extra = run_case(model, c, embed(c.portrait_key, c.portrait), args)
        row["tokenizer_psnr_db"] = c.psnr
        rows.append(row)
        extras.append(extra)
        c.video = None  # free the frames
    res["lipsync"] = lipsync_summary(rows)
    gtb = [r["gt_video_blinks"] for r in rows if r.get("gt_video_blinks")]
    n_lab = sum(g["labelled"] for g in gtb)
    res["cases"] = rows
    lead = cases[0]
    emb = embed(lead.portrait_key, lead.portrait)
    res["portrait_embedded"] = emb is not None
    people, ids = [], []
    for c in cases:  # one blink track per person of the group (its first case's photo and audio), lead first
        if c.identity not in ids:
            ids.append(c.identity)
            people.append((c.portrait_key, c.portrait, embed(c.portrait_key, c.portrait), c.pcm))
    res["controls"], ctrl_curves = run_controls(model, people, args.control_frames, args.seed, args.temperature)
    res["controls"]["blink"]["gt_video"] = {
        "labelled": n_lab, "found": sum(g["found"] for g in gtb),
        "hit_rate": sum(g["found"] for g in gtb) / n_lab if n_lab else None,
        "note": "the same detector and hit rule on the eval clips' own (ground-truth) video: the ceiling this "
                "instrument reaches at this resolution"}
    for person, gt in zip(res["controls"]["blink"]["per_person"], gt_blinks_by_identity(rows, ids), strict=True):
        person["identity"], person["gt_video"] = gt
    n_long = args.train_long_frames if group == "train" and args.train_long_frames else args.long_frames
    res["long_run"], long_curves = run_long(model, lead.portrait, emb, lead.pcm, n_long, args.seed, group,
                                             args.temperature)
    res["long_run"]["portrait"] = lead.portrait_key
    res["identities"] = sorted({c.identity for c in cases})
    return res, {"cases": extras, "controls": ctrl_curves, "long": long_curves, "lead": lead.portrait_key,
                 "portrait": lead.portrait}


def targets(held: dict) -> list[dict]:
    lr = held["long_run"]
    values = {"tokenizer_psnr_db": held["tokenizer"]["psnr_db"],
              "lipsync_r_heldout_voices": held["lipsync"]["heldout_voices"]["openness_r_mean"],
              "lipsync_r_human": held["lipsync"]["human"]["openness_r_mean"],
              "blink_hit_rate": held["controls"]["blink"]["hit_rate"],
              "identity_frac_early": lr["early"]["frac_below"], "identity_frac_late": lr["late"]["frac_below"],
              "stream_cost_ratio": lr["timing"]["ratio_5000_vs_50"]}
    out = []
    for key, desc, op, thr in TARGETS:
        v = values[key]
        ok = None if v is None else (v >= thr if op == ">=" else v <= thr)
        out.append({"name": key, "description": desc, "value": v, "op": op, "threshold": thr, "pass": ok})
    return out


def run(args: argparse.Namespace) -> int:
    _check(args)
    import torch

    from eartalking.evaluate import report_plots
    from eartalking.evaluate.measure import portrait_embedding
    from eartalking.model import checkpoint
    from eartalking.train.common import pick_device

    t0 = time.perf_counter()
    if not 0 <= args.human <= casesmod.MAX_EVALUATE_HUMAN:
        raise UserError(f"--human {args.human}: must be 0..{casesmod.MAX_EVALUATE_HUMAN} (later held-out human "
                        "prompts are the validation set of scripts/code_mean_sweep.py)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here (use --device cpu or auto)")
    device = pick_device(args.device, args.threads)
    args.train_clips = min(args.clips, 6) if args.train_clips is None else args.train_clips
    if args.control_frames is None:
        args.control_frames = min(250, max(50, args.long_frames))
    model, cfg = checkpoint.load(args.checkpoint, device=device)
    S = cfg.tokenizer.image_size
    corpus = casesmod.Corpus(args.data, S, args.assets)
    groups = {"heldout": corpus.heldout_cases(args.clips, args.human), "train": corpus.train_cases(args.train_clips)}
    if not groups["heldout"]:
        raise UserError(f"{args.data}: no eval clips and no held-out identities to evaluate")
    cache: dict[str, np.ndarray | None] = {}

    def embed(key: str, img: np.ndarray):
        if key not in cache:
            try:
                cache[key] = portrait_embedding(img)
            except UserError:  # no face found in the portrait: identity numbers stay null
                cache[key] = None
        return cache[key]

    result: dict = {"checkpoint": str(args.checkpoint), "model": cfg.name, "data": str(args.data),
                    "device": str(device), "settings": {k: v for k, v in vars(args).items() if k != "func"},
                    "split": corpus.split_summary(), "same_person_below": SAME}
    plot_data = {}
    for g, cases in groups.items():
        if cases:
            result[g], plot_data[g] = evaluate_group(model, g, cases, args, embed)
    result["targets"] = targets(result["heldout"])
    result["passed"] = all(t["pass"] is True for t in result["targets"])
    result["not_measured"] = [t["name"] for t in result["targets"] if t["pass"] is None]
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    result["plots"] = report_plots.write_all(plot_data, args.plots)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(_clean(result), indent=1, default=_json_default, allow_nan=False) + "\n")
    for t in result["targets"]:
        v = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        flag = {True: "PASS", False: "FAIL", None: "not measured"}[t["pass"]]
        print(f"{t['name']:<26} {v:>8} {t['op']} {t['threshold']:<6} {flag}")
    b = result["heldout"]["controls"]["blink"]
    print(f"blinks per held-out person (hits of {b['per_person'][0]['requested']}; in brackets the labelled blinks "
          "the detector finds in their eval clips' own video): "
          + ", ".join(f"{p['portrait'][:24]} {p['hits']} ({p['gt_video']['found']}/{p['gt_video']['labelled']})"
                      for p in b["per_person"]))
    print(f"evaluate: {result['elapsed_s']} s -> {args.json}, plots in {args.plots}")
    return 0


def _clean(o):
    """NaN/inf -> None (strict JSON), recursively."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
