"""Triton Python model ``talking_head``: decoupled streaming entry, a thin adapter over triton_repo/streaming.py.

Requests of one sequence (correlation id) carry the portrait (START), PCM chunks, control events and END;
every frame that becomes ready goes out as its own response; the last response of an END request carries the
end status and the final flag. The protocol is documented in ``eartalking.triton_repo.streaming``.
"""

import numpy as np
import triton_python_backend_utils as pb

from eartalking.triton_repo import adapter
from eartalking.triton_repo.bls import BlsTransport
from eartalking.triton_repo.streaming import Chunk, StreamingHost

INPUTS = ["portrait", "pcm", "control_frame", "controls", "control_mask", "crop_only", "temperature", "seed"]
FINAL = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _chunk(c, x):
    one = {k: v[0] for k, v in x.items()}  # drop the batch axis (1 per request)

    def scalar(name, cast, default):
        return cast(one[name].reshape(-1)[0]) if name in one and one[name].size else default

    return Chunk(corrid=c.corrid, start=c.start, end=c.end, portrait=one.get("portrait"), pcm=one.get("pcm"),
                 control_frame=one.get("control_frame"), controls=one.get("controls"),
                 control_mask=one.get("control_mask"), crop_only=scalar("crop_only", bool, False),
                 temperature=scalar("temperature", float, 0.0), seed=scalar("seed", int, 0))


class TritonPythonModel:
    def initialize(self, args):
        # graph_calls = bls: audio_encoder/step_decoder go to the server's graph models (batched across
        # sessions and instances, decoder state kept there); process: every graph runs in this process
        bls = adapter.params(args).get("graph_calls", "process") == "bls"
        engine, p = adapter.load_engine(args, load_faces=True, transport=BlsTransport(pb) if bls else None)
        self.host = StreamingHost(engine, adapter.idle_seconds(p), on_change=adapter.gauge(pb, "talking_head"))
        self.host.store.start_reaper()

    def execute(self, requests):
        live, chunks = [], []
        for r in requests:
            c = adapter.controls(pb, r)
            sender = r.get_response_sender()
            if c is None:  # READY = 0 padding
                sender.send(flags=FINAL)
                continue
            try:
                chunks.append(_chunk(c, adapter.inputs(pb, r, INPUTS)))
                live.append(sender)
            except Exception as e:  # noqa: BLE001 (a malformed request must not stop the model)
                sender.send(adapter.error(pb, f"sequence {c.corrid}: bad request: {e}"), flags=FINAL)
        for sender, c, res in zip(live, chunks, self.host.handle(chunks), strict=True):
            if res.error is not None:  # errors name their sequence: stream clients route them by it
                sender.send(adapter.error(pb, f"sequence {c.corrid}: {res.error}"), flags=FINAL)
                continue
            msgs = [[adapter.json_tensor(pb, "status", st)] for st in res.statuses]
            msgs += [[adapter.tensor(pb, "frame_index", np.array([[f.index]], np.int32)),
                      adapter.tensor(pb, "image", f.image[None]),
                      adapter.tensor(pb, "tokens", f.tokens[None].astype(np.int32))] for f in res.frames]
            if res.end is not None:
                msgs.append([adapter.json_tensor(pb, "status", res.end)])
            for k, tensors in enumerate(msgs):  # the last response of a request carries the final flag
                sender.send(pb.InferenceResponse(tensors), flags=FINAL if k == len(msgs) - 1 else 0)
            if not msgs:
                sender.send(flags=FINAL)
        return None

    def finalize(self):
        self.host.close()
