"""Shared fixtures of the unit tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

SENTENCES = (["We met at the station before the train left."], ["Thank you very much for your patience."])


def tiny_corpus(base: Path) -> Path:
    """3 clips at 64 px (espeak, the two bundled faces: one held out), built once per test session."""
    out = base / "eval_corpus"
    if (out / "split.json").is_file():
        return out
    from eartalking.data import corpus, faces, warp
    from eartalking.data.speech import EspeakSource
    from eartalking.data.visemes import viseme_track

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idents = faces.fixture_identities(64)
    tools = corpus.Tools({"espeak": EspeakSource()}, corpus.portrait_keys(idents), warp.FaceRig, viseme_track,
                         *SENTENCES)
    m = corpus.generate(out, 3, 1, size=64, workers=1, progress=False, tools=tools)
    assert m["clips"] == 3 and not m["failed"], m["failed"]
    return out


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return tiny_corpus(tmp_path_factory.getbasetemp())
