"""Engine-build settings as plain data, the stamp/rebuild logic (with a stand-in for tensorrt), and the
clear failure without TensorRT."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from eartalking.config import preset
from eartalking.export import build_engines as BE
from eartalking.export import specs as S

REPO = Path(__file__).resolve().parents[2]


def test_profiles_are_plain_data_from_specs():
    cfg = preset("tiny")
    sp = S.graph_specs(cfg)
    prof = S.trt_profiles(sp["audio_encoder"])
    lc, spf = cfg.audio.left_context, cfg.audio.samples_per_frame
    assert prof == {"pcm": {"min": [1, lc + spf], "opt": [4, lc + 4 * spf], "max": [16, lc + 64 * spf]}}
    step = S.trt_profiles(sp["step_decoder"])
    assert set(step) == {t.name for t in sp["step_decoder"].inputs}
    wl = cfg.decoder.window * cfg.block_len
    assert step["in_window_k"]["max"] == [16, cfg.decoder.layers, cfg.decoder.heads, wl, cfg.decoder.head_dim]
    assert step["gumbel"]["opt"] == [4, cfg.tokens_per_frame, cfg.tokenizer.codebook_size]
    json.dumps(step)  # plain data


class _FakeTRT:
    """Records what build_plan asks of TensorRT; enough API surface for build_engines."""

    __version__ = "10.1.0-fake"
    MemoryPoolType = SimpleNamespace(WORKSPACE="ws")
    BuilderFlag = SimpleNamespace(FP16="fp16", TF32="tf32")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    def __init__(self):
        self.calls = []
        fake = self

        class Dims(tuple):
            def __new__(cls, x):
                return tuple.__new__(cls, x)

        class Network:
            def __init__(self, names):
                self.names = names
                self.num_inputs = len(names)

            def get_input(self, i):
                return SimpleNamespace(name=self.names[i])

        class Profile:
            def set_shape(self, name, mn, opt, mx):
                fake.calls.append(("set_shape", name, list(mn), list(opt), list(mx)))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", size))

            def clear_flag(self, f):
                fake.calls.append(("clear", f))

            def set_flag(self, f):
                fake.calls.append(("set", f))

            def create_timing_cache(self, b):
                return SimpleNamespace(serialize=lambda: b"cache")

            def set_timing_cache(self, c, ignore_mismatch):
                pass

            def get_timing_cache(self):
                return SimpleNamespace(serialize=lambda: b"cache")

            def add_optimization_profile(self, p):
                fake.calls.append(("profile",))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.network = Network(fake.input_names)
                return fake.network

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"PLAN"

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = 0

            def parse(self, data):
                return True

        self.Dims, self.Builder, self.OnnxParser = Dims, Builder, OnnxParser


def test_build_stamps_and_rebuilds_only_on_change(exported, tmp_path):
    _, cfg, out, manifest = exported
    trt = _FakeTRT()
    gpu = {"gpu": "Fake GPU", "compute_capability": "9.0"}
    trt.input_names = [t.name for t in S.graph_specs(cfg)["step_decoder"].inputs]
    res = BE.build_all(trt, out, tmp_path, ["step_decoder"], set(), 512, False, gpu=gpu)
    assert res == {"step_decoder": "built"}
    stamp = json.loads((tmp_path / "step_decoder.json").read_text())
    assert stamp["tensorrt"] == "10.1.0-fake" and stamp["compute_capability"] == "9.0"
    assert stamp["onnx_sha256"] == manifest["graphs"]["step_decoder"]["sha256"]
    assert stamp["flags"] == {"precision": "fp32", "tf32": False, "workspace_mib": 512,
                              "profiles": manifest["graphs"]["step_decoder"]["trt_profiles"]}
    shapes = {c[1]: list(c[2:]) for c in trt.calls if c[0] == "set_shape"}
    assert shapes["in_frame"] == [[1, 1], [4, 1], [16, 1]]
    assert ("clear", "tf32") in trt.calls and ("set", "fp16") not in trt.calls
    def build(fp16=frozenset(), gpu=gpu):
        return BE.build_all(trt, out, tmp_path, ["step_decoder"], set(fp16), 512, False, gpu=gpu)["step_decoder"]

    assert build() == "up to date"
    trt.calls.clear()
    assert build({"step_decoder"}) == "built"  # flags changed
    assert ("set", "fp16") in trt.calls
    assert build({"step_decoder"}, {"gpu": "Other", "compute_capability": "8.6"}) == "built"  # GPU changed
    (tmp_path / "step_decoder.plan").write_bytes(b"tampered")
    assert build({"step_decoder"}, {"gpu": "Other", "compute_capability": "8.6"}) == "built"  # plan changed


def test_profile_naming_a_missing_input_is_an_error(exported):
    trt = _FakeTRT()
    trt.input_names = ["x"]
    builder = trt.Builder(None)
    with pytest.raises(ValueError, match="lacks"):
        BE.apply_profile(trt, builder, builder.create_builder_config(), builder.create_network(0),
                         {"pcm": {"min": [1], "opt": [1], "max": [1]}})


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_without_tensorrt_says_so_and_exits_nonzero(exported, tmp_path):
    _, _, out, _ = exported
    proc = subprocess.run([sys.executable, str(REPO / "export" / "build_engines.py"), "--onnx", str(out),
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1
    assert "TensorRT is not installed" in proc.stderr
    assert "docker run --rm --gpus all" in proc.stderr and "nvcr.io/nvidia/tensorrt:" in proc.stderr
    assert not list(tmp_path.iterdir())
