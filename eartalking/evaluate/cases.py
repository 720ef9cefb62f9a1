"""Which (portrait, utterance) pairs ``eartalking evaluate`` generates: held-out and training cases of a corpus.

What: ``Corpus(dir, size, assets)`` reads ``split.json``, the clip label JSONs and ``portraits/*.json``.
``heldout_cases(n)`` returns up to ``n`` eval clips (round-robin over speech sources, so the human voice and
every source are represented), each spoken by its own held-out portrait with its own audio, video and
labels; then one case for every held-out person no chosen clip shows (an eval clip's audio and labels,
preferring held-out voices); then, when no human eval clip was found, held-out prompts of the human
``allison`` source synthesized from the asset cache (``generate_eval.human_utterances``).
``train_cases(n)`` returns up to ``n`` training clips spread over identities.

Why: the issue-10 evaluation must cover all held-out people, held-out voices and sentences, and the human
voice separately; the labels of an utterance (openness from its phones) do not depend on the face, so an
eval clip's audio and labels can be spoken by any held-out portrait.

Shapes: ``Case.portrait`` uint8 [S,S,3]; ``pcm`` float32 [T*640]; ``labels`` name -> float32 [T];
``video`` uint8 [T,S,S,3] (the corpus clip) or None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Held-out human prompts at the head of the longest-first order that ``evaluate --human`` may report;
#: ``Corpus.validation_human_cases`` draws after them. ``MAX_EVALUATE_HUMAN`` leaves room within it for
#: evaluate's retries of unalignable prompts and the corpus's own human clips' sentences (left out of its list).
EVALUATE_HUMAN_RESERVE = 24
MAX_EVALUATE_HUMAN = 16


@dataclass
class Case:
    name: str
    clip: str | None  # corpus clip whose audio (and video, if ``video``) is used
    portrait_key: str
    portrait: np.ndarray
    identity: str
    source: str
    voice_key: str
    heldout_voice: bool
    human: bool
    text: str
    pcm: np.ndarray
    labels: dict | None
    video: np.ndarray | None
    psnr: float | None = None

    @property
    def n_frames(self) -> int:
        return len(self.pcm) // 640


def _round_robin(groups: dict[str, list]) -> list:
    out, lists = [], [list(v) for _, v in sorted(groups.items())]
    while any(lists):
        for v in lists:
            if v:
                out.append(v.pop(0))
    return out


class Corpus:
    """A corpus folder seen by the evaluator (see module docstring)."""

    def __init__(self, root: str | Path, size: int, assets: str | None = None):
        from eartalking.data.loader import ClipDataset

        self.root, self.size = Path(root), size
        self.split = json.loads((self.root / "split.json").read_text())
        self.ds = ClipDataset(self.root, names=[], size=size)  # reader only (clips loaded by name)
        manifest = self.root / "manifest.json"
        if assets is None and manifest.is_file():
            assets = (json.loads(manifest.read_text()).get("settings") or {}).get("assets")
        self.assets = assets if assets and Path(assets).is_dir() else None
        self.heldout_voices = set(self.split.get("heldout_voices", []))
        self.people: dict[str, list[str]] = {}  # person id -> portrait keys
        for p in sorted((self.root / "portraits").glob("*.png")):
            js = p.with_suffix(".json")
            ident = p.stem
            if js.is_file():
                try:
                    ident = str(json.loads(js.read_text()).get("identity", p.stem))
                except (OSError, ValueError):
                    pass
            self.people.setdefault(ident, []).append(p.stem)

    # ---------------------------------------------------------------------------------- helpers
    def meta(self, name: str) -> dict:
        p = self.root / f"{name}.json"
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            return {}
        d.pop("frames", None)
        d.pop("landmarks", None)
        return d

    def portrait(self, key: str) -> np.ndarray:
        from PIL import Image

        from eartalking.data.clipio import square_crop

        with Image.open(self.root / "portraits" / f"{key}.png") as im:
            return square_crop(np.asarray(im.convert("RGB")), self.size)

    def portrait_key(self, person: str) -> str | None:
        keys = self.people.get(person) or []
        return person if person in keys else (keys[0] if keys else None)

    def _clip_case(self, name: str, portrait_key: str | None = None, keep_video: bool = True) -> Case | None:
        from eartalking.data.clipio import ClipReadError

        try:
            clip = self.ds.load(name)
        except (ClipReadError, OSError, ValueError) as e:
            print(f"evaluate: skipping clip {name}: {e}")
            return None
        m = clip.meta
        own = portrait_key is None or portrait_key == m.get("portrait")
        key = m.get("portrait", name) if portrait_key is None else portrait_key
        portrait = clip.portrait if own else self.portrait(key)
        ident = m.get("identity", key) if own else next((p for p, ks in self.people.items() if key in ks), key)
        vk = m.get("voice_key", f"{m.get('speech_source', '?')}:{m.get('voice', '?')}")
        return Case(name=name if own else f"{name}@{key}", clip=name, portrait_key=key, portrait=portrait,
                    identity=str(ident), source=str(m.get("speech_source", "unknown")), voice_key=vk,
                    heldout_voice=vk in self.heldout_voices, human=m.get("speech_source") == "allison",
                    text=str(m.get("text", "")), pcm=clip.pcm, labels=clip.labels,
                    video=clip.frames if own and keep_video else None)

    # ---------------------------------------------------------------------------------- cases
    def heldout_cases(self, n: int, human: int | None = None) -> list[Case]:
        """Up to ``n`` eval clips plus the uncovered held-out people (module docstring), then human-voice cases:
        with ``human`` = None, up to min(4, n // 2) held-out prompts only when no chosen clip is human; with an
        int, held-out prompts (other sentences than the chosen human clips') until ``human`` cases are human."""
        names = [c for c in self.split.get("eval", []) if (self.root / f"{c}.json").is_file()]
        metas = {c: self.meta(c) for c in names}
        by_src: dict[str, list[str]] = {}
        for c in names:
            by_src.setdefault(str(metas[c].get("speech_source", "?")), []).append(c)
        cases = [c for c in (self._clip_case(x) for x in _round_robin(by_src)[:n]) if c is not None]
        shown = {c.identity for c in cases}
        donors = sorted(names, key=lambda c: metas[c].get("voice_key") not in self.heldout_voices)
        missing = [p for p in self.split.get("heldout_identities", []) if p not in shown and self.portrait_key(p)]
        for i, person in enumerate(missing):
            if not donors:
                break
            c = self._clip_case(donors[i % len(donors)], self.portrait_key(person), keep_video=False)
            if c is not None:
                c.identity = person
                cases.append(c)
        have = [c for c in cases if c.human]
        if human is None:
            if not have:
                cases += self._human_cases(max(1, min(4, n // 2)))
        elif len(have) < human:
            cases += self._human_cases(human - len(have), exclude={c.text for c in have})
        return cases

    def validation_human_cases(self, n: int, exclude: set[str] = frozenset()) -> list[Case]:
        """``n`` held-out human prompts that ``evaluate`` does not report, for choosing between checkpoints:
        the prompts after the first ``EVALUATE_HUMAN_RESERVE`` of the longest-first order that evaluate's
        ``--human`` top-up draws from (it never needs more than ``--human`` plus its retries and the few
        sentences of the corpus's own human clips). ``exclude``: sentences already measured (the validation
        corpus's human clips: the voice has one recording per prompt, so a sentence in both would count the
        same recording twice). Why: a corpus holds only a handful of human clips (corpus500: 7), too few to
        tell a +0.05 lip-sync change from noise."""
        return self._human_cases(n, exclude=exclude, skip=EVALUATE_HUMAN_RESERVE, prefix="allison_val")

    def _human_cases(self, n: int, exclude: set[str] = frozenset(), skip: int = 0,
                     prefix: str = "allison") -> list[Case]:
        from eartalking.evaluate.generate_eval import human_utterances

        people = [p for p in self.split.get("heldout_identities", []) if self.portrait_key(p)]
        if not people:
            return []
        out = []
        held = [t for t in self.split.get("heldout_sentences", []) if t not in exclude]
        for i, u in enumerate(human_utterances(self.assets, held, n, skip=skip)):
            person = people[i % len(people)]
            key = self.portrait_key(person)
            out.append(Case(name=f"{prefix}_{i}@{key}", clip=None, portrait_key=key, portrait=self.portrait(key),
                            identity=person, source="allison", voice_key=u["voice_key"],
                            heldout_voice=u["voice_key"] in self.heldout_voices, human=True, text=u["text"],
                            pcm=u["pcm"], labels=u["labels"], video=None))
        return out

    def train_cases(self, n: int) -> list[Case]:
        by_id: dict[str, list[str]] = {}
        for c in self.split.get("train", []):
            if (self.root / f"{c}.json").is_file():
                by_id.setdefault(str(self.meta(c).get("identity", c)), []).append(c)
        return [c for c in (self._clip_case(x) for x in _round_robin(by_id)[:n]) if c is not None]

    def split_summary(self) -> dict:
        return {"eval_clips": len(self.split.get("eval", [])), "train_clips": len(self.split.get("train", [])),
                "heldout_identities": self.split.get("heldout_identities", []),
                "heldout_voices": len(self.heldout_voices),
                "heldout_sentences": len(self.split.get("heldout_sentences", [])),
                "assets_for_human_prompts": self.assets}
