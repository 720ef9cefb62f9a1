"""WAV reading (every rate / channel count / bit depth), clear errors for bad files, portraits, MP4 writing."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from eartalking.cli import UserError
from eartalking.runtime import media


def wav_bytes(samples: np.ndarray, rate: int, bits: int, tag: int = 1, extensible: bool = False) -> bytes:
    """samples float [frames, channels] in [-1, 1] -> WAV bytes with the given encoding (test encoder)."""
    frames, ch = samples.shape
    if tag == 3:
        data = samples.astype("<f4" if bits == 32 else "<f8").tobytes()
    elif bits == 8:
        data = np.round(samples * 127 + 128).astype(np.uint8).tobytes()
    elif bits == 24:
        v = np.round(samples * (2**23 - 1)).astype(np.int64).reshape(-1) & 0xFFFFFF
        data = np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], 1).astype(np.uint8).tobytes()
    else:
        data = np.round(samples * (2 ** (bits - 1) - 1)).astype(f"<i{bits // 8}").tobytes()
    align = ch * bits // 8
    if extensible:
        sub = struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, ch, rate, rate * align, align, bits, 22, bits, 0) + sub
    else:
        fmt = struct.pack("<HHIIHH", tag, ch, rate, rate * align, align, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 4) + b"INFO"
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tone(rate: int, seconds: float, freq: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.repeat(x[:, None], channels, axis=1)


@pytest.mark.parametrize(
    ("rate", "channels", "bits", "tag", "ext", "tol"),
    [
        (16000, 1, 16, 1, False, 1e-4),
        (16000, 1, 8, 1, False, 1e-2),
        (44100, 2, 24, 1, False, 2e-3),
        (48000, 2, 32, 1, False, 2e-3),
        (22050, 1, 32, 3, False, 2e-3),
        (8000, 1, 64, 3, True, 2e-3),
        (96000, 6, 16, 1, True, 2e-3),
    ],
)
def test_wav_any_format_to_16k_mono(rate, channels, bits, tag, ext, tol):
    freq = float(np.random.default_rng(rate + bits).uniform(150, 900))
    pcm, info = media.read_wav(wav_bytes(tone(rate, 0.5, freq, channels), rate, bits, tag, ext))
    assert info["sample_rate"] == rate and info["channels"] == channels
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert abs(pcm.size - 8000) <= 1
    ref = 0.5 * np.sin(2 * np.pi * freq * np.arange(pcm.size) / 16000)
    np.testing.assert_allclose(pcm[200:-200], ref[200:-200], atol=tol)  # edges: filter start-up


def test_wav_path_roundtrip(tmp_path):
    x = (np.random.default_rng(0).uniform(-0.9, 0.9, 4000)).astype(np.float32)
    media.write_wav(tmp_path / "a.wav", x)
    y, _ = media.read_wav(tmp_path / "a.wav")
    np.testing.assert_allclose(y, x, atol=1 / 32767)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ID3\x04 this is an mp3", "not a WAV file"),
        (b"RIFF\x10\x00\x00\x00WAVEdata\x00\x00\x00\x00", "no 'fmt ' chunk"),
        (wav_bytes(tone(16000, 0.1, 300), 16000, 16)[:36], "no 'data' chunk"),
        (wav_bytes(np.zeros((0, 1)), 16000, 16), "holds no samples"),
        (wav_bytes(tone(16000, 0.1, 300), 16000, 16, tag=0x55), "unsupported WAV encoding"),
        (wav_bytes(tone(16000, 0.1, 300), 16000, 16).replace(b"\x10\x00data", b"\x0c\x00data", 1), None),
        (wav_bytes(tone(1000, 0.1, 300), 1000, 16), "outside the supported"),
        (wav_bytes(np.full((10, 1), np.nan), 16000, 32, tag=3), "NaN"),
    ],
)
def test_bad_wav_clear_errors(data, message):
    if message is None:  # 12-bit header variant built by hand below
        data = wav_bytes(tone(16000, 0.1, 300), 16000, 16)
        data = data[:34] + struct.pack("<H", 12) + data[36:]
        message = "unsupported WAV bit depth 12"
    with pytest.raises(UserError, match=message):
        media.read_wav(data)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        media.read_wav(tmp_path / "nope.wav")


def test_image_reading_and_limits(tmp_path):
    from skimage import data

    img = data.astronaut()
    media.write_png(tmp_path / "p.png", img)
    np.testing.assert_array_equal(media.read_image(tmp_path / "p.png"), img)
    png = (tmp_path / "p.png").read_bytes()
    with pytest.raises(UserError, match="limit is 1000 pixels"):
        media.read_image(png, max_pixels=1000)
    with pytest.raises(UserError, match="corrupt or truncated"):
        media.read_image(png[: len(png) // 2])
    with pytest.raises(UserError, match="not an image"):
        media.read_image(b"hello, not an image at all")
    media.write_png(tmp_path / "tiny.png", img[:10, :10])
    with pytest.raises(UserError, match="at least 32x32"):
        media.read_image(tmp_path / "tiny.png")


def test_mp4_writer(tmp_path):
    rng = np.random.default_rng(3)
    pcm = rng.uniform(-0.5, 0.5, 640 * 30).astype(np.float32)
    with media.Mp4Writer(tmp_path / "o.mp4", 67, 64) as w:  # odd width is padded to even
        for i in range(30):
            w.write_frame(rng.integers(0, 255, (64, 67, 3), dtype=np.uint8))
            w.write_audio(pcm[i * 640 : (i + 1) * 640])
    info = media.probe_mp4(tmp_path / "o.mp4")
    assert info["frames"] == 30 and info["fps"] == 25.0 and info["video_codec"] == "h264"
    assert info["audio"] and info["audio_codec"] == "aac"
    assert abs(info["audio_seconds"] - 1.2) < 0.05
    assert info["metadata"]["comment"] == media.GENERATED_TAG
