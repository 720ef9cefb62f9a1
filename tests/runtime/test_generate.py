"""`eartalking generate` end to end: MP4 with the right frame count, an audio stream and the generated tag."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from runtime_helpers import speechlike

from eartalking.cli import main
from eartalking.runtime import media


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, portrait):
    d = tmp_path_factory.mktemp("gen_in")
    media.write_png(d / "portrait.png", portrait)
    pcm = speechlike(1.05, seed=81)
    media.write_wav(d / "speech.wav", pcm)
    return d, pcm


def test_generate_writes_mp4(inputs, onnx_dir, tmp_path):
    d, pcm = inputs
    (tmp_path / "c.json").write_text(json.dumps([{"time": 0.4, "blink": 1}, {"frame": 14, "blink": None, "yaw": 20}]))
    out = tmp_path / "out.mp4"
    rc = main(["generate", "--portrait", str(d / "portrait.png"), "--audio", str(d / "speech.wav"), "--onnx",
               str(onnx_dir), "--controls", str(tmp_path / "c.json"), "--threads", "1", "--quiet", "--out", str(out)])
    assert rc == 0
    info = media.probe_mp4(out)
    assert info["frames"] == math.ceil(len(pcm) / 640) == 27
    assert (info["width"], info["height"]) == (512, 512)  # pasted back into the photo
    assert info["audio"] and info["audio_codec"] == "aac" and abs(info["audio_seconds"] - 1.05) < 0.05
    assert info["metadata"]["comment"] == media.GENERATED_TAG


def test_generate_crop_only_torch_backend(inputs, small_model, tmp_path):
    from eartalking.model.checkpoint import save

    d, pcm = inputs
    save(tmp_path / "ckpt", small_model)
    out = tmp_path / "crop.mp4"
    rc = main(["generate", "--portrait", str(d / "portrait.png"), "--audio", str(d / "speech.wav"), "--backend",
               "torch", "--checkpoint", str(tmp_path / "ckpt"), "--crop-only", "--quiet", "--out", str(out)])
    assert rc == 0
    info = media.probe_mp4(out)
    assert info["frames"] == 27 and (info["width"], info["height"]) == (64, 64)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_generate_from_text(inputs, onnx_dir, tmp_path):
    d, _ = inputs
    out = tmp_path / "text.mp4"
    rc = main(["generate", "--portrait", str(d / "portrait.png"), "--text", "Hello.", "--onnx", str(onnx_dir),
               "--crop-only", "--quiet", "--out", str(out)])
    assert rc == 0
    assert media.probe_mp4(out)["frames"] > 5


@pytest.mark.parametrize(
    ("controls", "message"),
    [
        ([{"time": 0.2, "smile": 1}], "unknown control signal 'smile'"),
        ([{"frame": 3, "yaw": 90}], r"yaw=90 is out of range \[-30.0, 30.0\]"),
        ([{"frame": 500, "blink": 1}], "past the end of the video"),
        ([{"blink": 1}], "exactly one of"),
        ({"blink": 1}, "expected a JSON list"),
    ],
)
def test_generate_bad_controls(inputs, onnx_dir, tmp_path, capsys, controls, message):
    d, _ = inputs
    (tmp_path / "c.json").write_text(json.dumps(controls))
    rc = main(["generate", "--portrait", str(d / "portrait.png"), "--audio", str(d / "speech.wav"), "--onnx",
               str(onnx_dir), "--controls", str(tmp_path / "c.json"), "--quiet", "--out", str(tmp_path / "o.mp4")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert __import__("re").search(message, err)


def test_generate_bad_inputs(inputs, onnx_dir, tmp_path, capsys):
    d, _ = inputs
    (tmp_path / "noface.png").write_bytes(b"")
    media.write_png(tmp_path / "noface.png", np.full((200, 200, 3), 90, np.uint8))
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    cases = [
        (["--portrait", str(tmp_path / "noface.png"), "--audio", str(d / "speech.wav")], "no face found"),
        (["--portrait", str(d / "portrait.png"), "--audio", str(tmp_path / "bad.wav")], "no 'fmt ' chunk"),
        (["--portrait", str(d / "speech.wav"), "--audio", str(d / "speech.wav")], "not an image"),
        (["--portrait", str(d / "portrait.png"), "--audio", str(d / "speech.wav"), "--backend", "tensorrt"],
         "TensorRT|plans"),
    ]
    for args, message in cases:
        rc = main(["generate", *args, "--onnx", str(onnx_dir), "--engines", str(tmp_path), "--quiet",
                   "--out", str(tmp_path / "o.mp4")])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert __import__("re").search(message, err) and "Traceback" not in err
