"""Corpus planning: which person, voice and sentence each clip gets, and the held-out evaluation split.

What: ``plan(n_clips, seed, voices, identities, train_sentences, eval_sentences, weights, prompts)`` returns a
list of ``Job`` (one per clip, each with its own seed) and a ``Split`` (held-out identities, voices and
sentences). Pure: no audio, no images, so it is fast, testable and identical for a given seed.

Why (DESIGN.md §3): evaluation must use people, voices and sentences never trained on:
  * whole people are held out (>= 8 when there are >= 16, else a quarter, >= 1); a person may have several
    appearances (photos; ``faces.load_identities`` groups them by dlib embedding), all held out together;
  * TTS voices are held out whole (>= 3 over the corpus where possible: 2-3 per source with many voices,
    1 from a source with 3-5, none from a source with fewer, always leaving >= 2 for training);
    espeak voices are grouped by variant (``en-us+f2`` and ``en+f2`` sound alike);
  * human recordings with fixed texts (sources with ``prompts()``) are split by prompt; when there is
    more than one human voice, one is held out whole as well;
  * EVAL_SENTENCES never appear in training clips.
Eval clips (15%, >= 1) always show a held-out person speaking an eval sentence; every second one also
uses a held-out voice (so identity and voice generalisation can be told apart).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field

import numpy as np

EVAL_FRACTION = 0.15
#: identities treated as bundled demo portraits: kept in training unless too few people exist
DEMO_IDENTITIES = ("fixture_astronaut", "fixture_grace_hopper")


@dataclass
class Job:
    """One clip to generate (everything a worker needs besides the loaded tools)."""

    index: int
    name: str
    identity: str  # person id
    portrait: str  # appearance key: portraits/<portrait>.png is the clip's reference image
    source: str
    voice: str
    text: str
    rate: float
    pitch: float
    seed: int
    split: str  # "train" | "eval"
    alternates: list[str] = field(default_factory=list)  # same-split texts to use if ``text`` fails to synthesize

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Split:
    heldout_identities: list[str] = field(default_factory=list)
    heldout_voices: list[str] = field(default_factory=list)
    heldout_sentences: list[str] = field(default_factory=list)
    train: list[str] = field(default_factory=list)
    eval: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"train": self.train, "eval": self.eval, "heldout_identities": self.heldout_identities,
                "heldout_voices": self.heldout_voices,
                "heldout_sentences": self.heldout_sentences}


def voice_key(source: str, voice: str) -> str:
    """Globally unique voice name, ``source:voice``."""
    return f"{source}:{voice}"


def voice_group(source: str, voice: str) -> str:
    """Voices that sound alike share a group (espeak: the variant after '+'; others: the voice itself)."""
    if source == "espeak":
        return f"espeak:{voice.partition('+')[2] or 'default'}"
    return voice_key(source, voice)


def _stable_frac(text: str) -> float:
    """A number in [0, 1) fixed by the text alone (so a prompt's split never depends on the seed)."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 2**32


class _Cycler:
    """Draw items evenly: shuffle, hand out each once, reshuffle (balanced counts per item)."""

    def __init__(self, items: list, rng: np.random.Generator):
        self.items, self.rng, self.queue = list(items), rng, []

    def __call__(self):
        if not self.items:
            raise ValueError("nothing to draw from")
        if not self.queue:
            self.queue = [self.items[i] for i in self.rng.permutation(len(self.items))]
        return self.queue.pop()


def _heldout_voices(voices: dict[str, list[str]], human: set[str], rng: np.random.Generator) -> set[str]:
    """Voice keys held out whole (see module docstring)."""
    out: set[str] = set()
    spare: list[tuple[int, str, list[str]]] = []
    for src in sorted(voices):
        if src in human:
            continue
        groups = sorted({voice_group(src, v) for v in voices[src]})
        if len(groups) < 3:
            continue
        k = 1 if len(groups) <= 5 else min(3, max(2, len(groups) // 8))
        perm = [groups[i] for i in rng.permutation(len(groups))]
        chosen = set(perm[:k])
        spare.append((len(groups) - k - 2, src, perm[k:]))  # keep >= 2 groups of each source for training
        out |= {voice_key(src, v) for v in voices[src] if voice_group(src, v) in chosen}
    n_groups = len({voice_group(*k.split(":", 1)) for k in out})
    for room, src, rest in sorted(spare, reverse=True):  # reach >= 3 held-out voices where possible
        for g in rest[: max(0, min(room, 3 - n_groups))]:
            out |= {voice_key(src, v) for v in voices[src] if voice_group(src, v) == g}
            n_groups += 1
    human_voices = sorted(voice_key(s, v) for s in sorted(human) for v in voices.get(s, []))
    if len(human_voices) >= 2:  # keep the largest (first listed) in training, hold out one other whole
        out.add(human_voices[1 + int(rng.integers(len(human_voices) - 1))])
    return out


def plan(n_clips: int, seed: int, voices: dict[str, list[str]], people: dict[str, list[str]],
         train_sentences: list[str], eval_sentences: list[str], weights: dict[str, float],
         prompts: dict[str, list[str]] | None = None,
         eval_fraction: float = EVAL_FRACTION) -> tuple[list[Job], Split]:
    """Plan ``n_clips`` clips. ``voices``: source -> voice names (available sources only); ``people``: person id
    -> appearance keys (portraits); ``prompts``: source -> fixed texts for human-recording sources;
    ``weights``: source -> sampling weight."""
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    if not people or not all(people.values()):
        raise ValueError("no identities to render (every person needs at least one portrait)")
    prompts = prompts or {}
    rng = np.random.default_rng([seed, 0x5EED])
    srcs = [s for s in sorted(voices) if voices[s] and weights.get(s, 0) > 0]
    if not srcs:
        raise ValueError(f"no speech source with voices and weight > 0 (sources {sorted(voices)}, weights {weights})")
    # ---- people
    ids = sorted(people)
    n_out = 8 if len(ids) >= 16 else max(1, len(ids) // 4)
    order = [ids[i] for i in rng.permutation(len(ids))]
    order.sort(key=lambda i: i in DEMO_IDENTITIES)  # demo portraits last (stable sort): they stay in training
    out_ids = sorted(order[:n_out])
    train_ids = [i for i in ids if i not in out_ids] or out_ids  # a single person: eval on it too
    split = Split(heldout_identities=out_ids)
    # ---- voices and sentences
    human = {s for s in srcs if s in prompts}
    out_voices = _heldout_voices({s: voices[s] for s in srcs}, human, rng)
    split.heldout_voices = sorted(out_voices)
    eval_prompts = {s: [p for p in prompts[s] if _stable_frac(p) < eval_fraction] for s in human}
    train_prompts = {s: [p for p in prompts[s] if _stable_frac(p) >= eval_fraction] for s in human}
    eval_set = set(eval_sentences)
    train_sentences = [s for s in train_sentences if s not in eval_set]
    split.heldout_sentences = sorted(eval_set | {p for s in human for p in eval_prompts[s]})
    # ---- clips
    n_eval = 0 if n_clips < 2 else max(1, round(n_clips * eval_fraction))
    eval_idx = set(rng.choice(n_clips, size=n_eval, replace=False).tolist()) if n_eval else set()
    w = np.array([weights[s] for s in srcs], np.float64)
    draw_id = {"train": _Cycler(train_ids, rng), "eval": _Cycler(out_ids, rng)}
    draw_voice = {(s, h): _Cycler([v for v in voices[s] if (voice_key(s, v) in out_voices) == h], rng)
                  for s in srcs for h in (False, True)}
    draw_text = {"train": _Cycler(train_sentences, rng), "eval": _Cycler(sorted(eval_set), rng)}
    draw_prompt = {(s, k): _Cycler(d[s], rng) for s in human for k, d in (("train", train_prompts),
                                                                          ("eval", eval_prompts))}
    jobs: list[Job] = []
    n_eval_done = 0
    for i in range(n_clips):
        part = "eval" if i in eval_idx else "train"
        want_heldout_voice = part == "eval" and n_eval_done % 2 == 0
        n_eval_done += part == "eval"
        ok = [j for j, s in enumerate(srcs) if draw_voice[(s, want_heldout_voice)].items
              and (s not in human or draw_prompt[(s, part)].items)
              and (s in human or draw_text[part].items)]
        if not ok:  # no held-out voice anywhere: fall back to a training voice
            ok = [j for j, s in enumerate(srcs) if draw_voice[(s, False)].items]
            want_heldout_voice = False
        p = w[ok] / w[ok].sum()
        src = srcs[ok[int(rng.choice(len(ok), p=p))]]
        voice = draw_voice[(src, want_heldout_voice)]()
        text = draw_prompt[(src, part)]() if src in human else draw_text[part]()
        rate, pitch = (1.0, 1.0) if src in human else (float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15)))
        person = draw_id[part]()
        portrait = people[person][int(rng.integers(len(people[person])))]
        pool = (train_prompts if part == "train" else eval_prompts)[src] if src in human else \
            (train_sentences if part == "train" else sorted(eval_set))
        others = [t for t in pool if t != text]
        alt_rng = np.random.default_rng([seed, i, 7])  # separate stream: alternates never shift the plan
        alternates = [others[k] for k in alt_rng.permutation(len(others))[:2]]
        jobs.append(Job(index=i, name=f"clip_{i:04d}", identity=person, portrait=portrait, source=src, voice=voice,
                        text=text, rate=round(rate, 3), pitch=round(pitch, 3),
                        seed=int(rng.integers(2**31)), split=part, alternates=alternates))
        (split.eval if part == "eval" else split.train).append(jobs[-1].name)
    return jobs, split


def summarize(jobs: list[Job]) -> dict:
    """Counts per source / voice / identity / split, for the manifest."""
    out: dict[str, dict] = {"per_source": {}, "voices_per_source": {}, "split": {}}
    voices: dict[str, set] = {}
    for j in jobs:
        out["per_source"][j.source] = out["per_source"].get(j.source, 0) + 1
        out["split"][j.split] = out["split"].get(j.split, 0) + 1
        voices.setdefault(j.source, set()).add(j.voice)
    out["voices_per_source"] = {s: len(v) for s, v in sorted(voices.items())}
    out["identities_used"] = len({j.identity for j in jobs})
    out["voices_used"] = sum(len(v) for v in voices.values())
    return out


def ceil_frames(n_samples: int, sample_rate: int = 16000, fps: int = 25) -> int:
    """Video frames for an utterance: ceil(duration * fps) (at least 1)."""
    return max(1, math.ceil(n_samples * fps / sample_rate - 1e-9))
