"""Many concurrent clients: every stream gets all its frames (equal to a lone run), 0 errors, and the
live-sessions gauge returns to 0. The 16 x 500-frame soak is marked slow."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import speech_like

from eartalking.client import TalkingHeadClient


def _concurrent(target: str, portrait: bytes, clients: int, seconds: float, realtime: bool = False):
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            pcm = speech_like(seconds, seed=100 + i)
            with TalkingHeadClient(target) as c:
                ctl = [{"frame": 3 + i, "blink": 1.0}]
                results[i] = list(c.stream(portrait, pcm, ctl, realtime=realtime, seed=i, chunk_ms=20 + i))
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return results, errors


@pytest.mark.parametrize("which", ["fake_server", "real_server"])
def test_16_concurrent_short_streams(request, portrait_png, which):
    srv = request.getfixturevalue(which)
    results, errors = _concurrent(srv.target, portrait_png, clients=16, seconds=1.0)
    assert not errors, errors[:3]
    n = 25
    assert sorted(results) == list(range(16)) and all(len(v) == n for v in results.values())
    for i in (0, 7, 15):  # concurrency changes nothing: equal to the same stream alone
        pcm = speech_like(1.0, seed=100 + i)
        with TalkingHeadClient(srv.target) as c:
            alone = list(c.stream(portrait_png, pcm, [{"frame": 3 + i, "blink": 1.0}], seed=i))
        for a, b in zip(alone, results[i], strict=True):
            np.testing.assert_array_equal(a.image, b.image)
            assert a.controls == b.controls
    assert srv.wait_live(0) == 0
    if which == "real_server":  # the scheduler stepped sessions together
        rounds = srv.metric("eartalking_batch_sessions_count")
        alone = srv.metric("eartalking_batch_sessions_bucket", '{le="1.0"}')
        assert rounds > 0 and alone < rounds


@pytest.mark.slow
def test_16_clients_500_frames_soak(real_server, portrait_png):
    results, errors = _concurrent(real_server.target, portrait_png, clients=16, seconds=20.0)
    assert not errors, errors[:3]
    assert all(len(v) == 500 for v in results.values()) and len(results) == 16
    assert real_server.wait_live(0) == 0
