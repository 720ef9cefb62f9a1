"""The PyTorch model behind the graph interface (``--backend torch``): the reference, and the GPU path
where ONNX Runtime has no CUDA build. Imported only when chosen (torch is not a runtime dependency).

Each graph name maps to the model call with the same I/O as the exported graph (docs/INTERFACES.md):
``tokenizer_encoder`` -> Tokenizer.encode + reference; ``tokenizer_decoder`` -> Tokenizer.decode;
``audio_encoder`` -> AudioEncoder; ``step_decoder`` -> StepDecoder.sink (rows with ``start``) + step +
select, with the state tensors in and out. Dimensions come from the checkpoint's config (``cfg.dims()``).

Usage: backend = TorchBackend("checkpoints/tiny", device="cuda")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eartalking.runtime.backends import Backend


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu", threads: int | None = None,
                 model=None) -> None:
        import torch

        from eartalking.model import checkpoint as ckpt

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if threads:
            torch.set_num_threads(int(threads))
        self.torch, self.device = torch, device
        if model is None:
            model, _ = ckpt.load(checkpoint, device=device)
        elif next(model.parameters()).device != torch.device(device):
            import copy

            model = copy.deepcopy(model)  # .to() moves in place: leave the caller's model where it was
        self.model = model.to(device).eval()
        self.cfg = self.model.cfg
        self._meta = {k: str(v) for k, v in self.cfg.dims().items()}

    def metadata(self, graph: str) -> dict[str, str]:
        return dict(self._meta)

    def _t(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, m = self.torch, self.model
        with torch.inference_mode():
            if graph == "tokenizer_encoder":
                img = self._t(feeds["image"])
                out = {"tokens": m.tokenizer.encode(img).to(torch.int32)}
                out |= {f"ref_{i}": r for i, r in enumerate(m.tokenizer.reference(img))}
            elif graph == "tokenizer_decoder":
                refs = [self._t(feeds[f"ref_{i}"]) for i in range(len(self.cfg.tokenizer.ref_shapes))]
                out = {"image": m.tokenizer.decode(self._t(feeds["tokens"]).long(), refs)}
            elif graph == "audio_encoder":
                out = {"audio_tokens": m.audio(self._t(feeds["pcm"]))}
            elif graph == "step_decoder":
                out = self._step({k: self._t(v) for k, v in feeds.items()})
            else:
                raise KeyError(f"unknown graph {graph!r}")
            return {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in out.items()}

    def _step(self, f: dict) -> dict:
        torch, dec = self.torch, self.model.decoder
        start = f["start"].reshape(-1) != 0
        sink_k, sink_v = f["in_sink_k"], f["in_sink_v"]
        window_k, window_v = f["in_window_k"], f["in_window_v"]
        prev, frame = f["in_prev_tokens"].long(), f["in_frame"].long()
        if bool(start.any()):
            sk, sv = dec.sink(f["ref_tokens"].long())
            s5 = start[:, None, None, None, None]
            sink_k, sink_v = torch.where(s5, sk, sink_k), torch.where(s5, sv, sink_v)
            window_k, window_v = torch.where(s5, 0.0, window_k), torch.where(s5, 0.0, window_v)
            prev = torch.where(start[:, None], f["ref_tokens"].long(), prev)
            frame = torch.where(start[:, None], 0, frame)
        logits, wk, wv = dec.step(f["audio_tokens"], f["controls"], f["control_mask"], sink_k, sink_v,
                                  window_k, window_v, dec.anchor(prev, f["ref_tokens"].long()), frame)
        tokens = dec.pick(logits, f["temperature"], f["gumbel"], f["ref_tokens"].long(),
                          f["control_mask"]).to(torch.int32)
        return {"tokens": tokens, "out_sink_k": sink_k, "out_sink_v": sink_v, "out_window_k": wk,
                "out_window_v": wv, "out_prev_tokens": tokens, "out_frame": (frame + 1).to(torch.int32)}
