"""Remote graph calls (runtime/remote.py): sessions whose step_decoder state lives in a server.

The "server" here is the CPU flavour's own graph-model logic (triton_repo/graph_models.py: per-sequence
state keyed by correlation id, START/END from the request) behind a fake transport, so the BLS path is
checked against the in-process path without Triton. The real tritonserver check is in tests/triton.
"""

from __future__ import annotations

import numpy as np
import pytest

from eartalking.runtime.remote import RemoteStepper, Request, RoutedBackend


class FakeServer:
    """A ``Transport`` over graph_models: what a Triton server with the CPU-flavour models does with BLS."""

    def __init__(self, engine, idle_s: float = 60.0) -> None:
        from eartalking.triton_repo import graph_models

        self.models = {g: graph_models.make(g, engine, idle_s) for g in ("audio_encoder", "step_decoder")}
        self.batches: list[tuple[str, int, list[tuple[bool, bool]]]] = []

    def infer(self, graph: str, reqs: list[Request]) -> list[dict[str, np.ndarray]]:
        from eartalking.triton_repo.sequences import Controls

        m = self.models[graph]
        ctrls = [Controls(r.corrid, r.start, r.end) if m.stateful else None for r in reqs]
        self.batches.append((graph, len(reqs), [(r.start, r.end) for r in reqs]))
        out = m.execute([r.feeds for r in reqs], ctrls)
        for o in out:
            if isinstance(o, Exception):
                raise RuntimeError(f"{graph}: {o}")
        return [{k: o[k] for k in r.outputs} for o, r in zip(out, reqs, strict=True)]

    def live(self) -> int:
        return len(self.models["step_decoder"].store)


def _pcm(seed: int, frames: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(frames * 640)
    env = np.abs(np.sin(np.linspace(0, rng.uniform(3, 9), n))) ** 2
    return (rng.standard_normal(n) * env * 6000).clip(-32768, 32767).astype(np.int16)


@pytest.fixture()
def remote(engine):
    from eartalking.runtime.session import Engine

    server = FakeServer(engine)
    eng = Engine(RoutedBackend(engine.backend, server), stepper=RemoteStepper(server), load_faces=False)
    return eng, server


def _run(eng, face, pcms, chunk=900):
    """Interleave several sessions chunk by chunk through step_many; frames per session."""
    from eartalking.runtime.session import Session, step_many

    sessions = [Session(eng, None, crop_only=True, face=face) for _ in pcms]
    out: list[list] = [[] for _ in pcms]
    for a in range(0, max(len(p) for p in pcms), chunk):
        for s, p in zip(sessions, pcms, strict=True):
            if a < len(p):
                s.feed(p[a : a + chunk])
        for i, fr in enumerate(step_many(sessions)):
            out[i] += fr
    for s in sessions:
        s.finish()
    for i, fr in enumerate(step_many(sessions)):
        out[i] += fr
    return sessions, out


def test_remote_steps_equal_local_and_end_frees_server_state(engine, remote, face):
    eng, server = remote
    pcms = [_pcm(1, 9.5), _pcm(2, 7.2)]  # 10 and 8 frames: past the window wrap, unequal lengths
    _, ref = _run(engine, face, pcms)
    sessions, got = _run(eng, face, pcms)
    for r, g in zip(ref, got, strict=True):
        assert [f.index for f in g] == list(range(len(r))) and len(r) in (10, 8)
        for a, b in zip(r, g, strict=True):
            np.testing.assert_array_equal(a.tokens, b.tokens)
            np.testing.assert_array_equal(a.image, b.image)
    steps = [b for b in server.batches if b[0] == "step_decoder"]
    assert sum(n for _, n, _ in steps) == 18 and max(n for _, n, _ in steps) == 2  # both sessions in one call
    flags = [f for _, _, fl in steps for f in fl]
    assert flags.count((True, False)) == 2 and flags.count((False, True)) == 2  # one START and one END each
    assert any(b[0] == "audio_encoder" for b in server.batches)  # audio went remote too
    assert server.live() == 0 and all(s.state is None for s in sessions)


def test_remote_sequences_have_distinct_ids_and_abandoned_ones_wait_for_idle_reap(engine, face):
    from eartalking.runtime.session import Engine, Session, step_many

    server = FakeServer(engine)
    eng = Engine(RoutedBackend(engine.backend, server), stepper=RemoteStepper(server), load_faces=False)
    a, b = Session(eng, None, crop_only=True, face=face), Session(eng, None, crop_only=True, face=face)
    assert a.state.corrid != b.state.corrid and a.state.corrid >> 62 == 1  # clear of clients' small ids
    a.feed(_pcm(3, 6))
    assert step_many([a])[0]
    assert server.live() == 1
    a.close()  # dropped without END: the server keeps it until its idle timeout
    assert server.live() == 1
    store = server.models["step_decoder"].store
    store.reap(now=store.clock() + 3600)  # an hour later
    assert server.live() == 0
    b.feed(_pcm(4, 6))  # a server that lost the sequence (reaped) answers with an error naming it
    step_many([b])
    store.reap(now=store.clock() + 3600)
    b.feed(_pcm(5, 2))
    with pytest.raises(RuntimeError, match="step_decoder"):
        step_many([b])
