"""Model configuration: one dataclass per component, and named presets.

Every dimension that export, the runtime, Triton and the gRPC API need comes from here
(and, downstream of export, from the ONNX ``metadata_props`` written from here).

Shapes used throughout (B = sessions in a batch):
  image             [B, 3, S, S] float32 in [0, 1]          S = ``tokenizer.image_size``
  frame tokens      [B, N] int64, N = ``tokenizer.tokens_per_frame`` = (S / downsample)^2
  ref features      list of [B, C_i, S/2^(i+1), S/2^(i+1)] for i in 0..len(ref_channels)-1, preceded by the
                    portrait itself [B, 3, S, S] when ``tokenizer.ref_pixels`` (``tokenizer.ref_shapes``)
  pcm               [B, samples] float32, PCM16 value / 32768, 16 kHz mono
  audio tokens      [B, frames, A, D_a]   A = ``audio.tokens_per_frame``, D_a = ``audio.dim``
  controls          [B, C] float32 and control mask [B, C] float32 (1 = given, 0 = absent)
  frame block       C control tokens | A audio tokens | N slot tokens  (``decoder.block_len``)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

#: FCIC control signals, in this order everywhere (graph inputs, JSON, proto, labels).
CONTROL_NAMES: tuple[str, ...] = ("yaw", "pitch", "roll", "blink", "expression")
#: Valid range of each control value (degrees for pose, 0..1 for blink/expression).
CONTROL_RANGES: dict[str, tuple[float, float]] = {
    "yaw": (-30.0, 30.0),
    "pitch": (-20.0, 20.0),
    "roll": (-20.0, 20.0),
    "blink": (0.0, 1.0),
    "expression": (0.0, 1.0),
}
#: Divisors that bring each control to roughly unit scale before it is embedded.
CONTROL_SCALES: dict[str, float] = {"yaw": 30.0, "pitch": 20.0, "roll": 20.0, "blink": 1.0, "expression": 1.0}


@dataclass
class TokenizerConfig:
    """Portrait-conditioned VQ autoencoder (tokenizer_encoder / tokenizer_decoder)."""

    image_size: int = 128
    downsample: int = 16  # 128 / 16 = 8 -> 8x8 tokens per frame
    codebook_size: int = 512
    code_dim: int = 64
    enc_channels: tuple[int, ...] = (32, 64, 128, 256)  # one stride-2 stage each
    ref_channels: tuple[int, ...] = (32, 64, 128, 256)  # reference features at S/2, S/4, S/8, S/16
    dec_channels: tuple[int, ...] = (128, 64, 32, 16)  # decoder stages, coarse to fine (runs per frame: kept thin)
    attn_at: int = 16  # cross-attention to the reference at this resolution (0 = none)
    #: reference alignment: a flow predicted from the decoder map at this resolution resamples the portrait's
    #: finer reference features into the current frame's pose before they are fused (0 = no alignment)
    flow_at: int = 0
    #: pixel path: the portrait's own pixels are one more reference (entry 0 of ``ref_shapes``, [3,S,S] in 0..1);
    #: the decoder warps them along the aligner's flow (plus a full-resolution residual) and blends them into its
    #: output per pixel, so detail finer than its last stage comes from the portrait (needs ``flow_at``)
    ref_pixels: bool = False
    #: eye refiner (``EyeRefiner``): a small conv stack of this width over the eye band of the output that adds a
    #: residual inside the eye boxes only (grown by 3 px), so the eyes can be re-taught (shut eyes drawn
    #: visibly) while every pixel outside them stays bit-identical (0 = none)
    eye_refiner: int = 0
    #: the eye refiner's residual only where the frame's eye tokens say shut (``Tokenizer.shut_map``; needs
    #: ``eye_refiner`` and ``eye_unblend``): frames with open eye tokens are drawn exactly as without a refiner,
    #: so audio-only sessions (whose eyes stay open) and every open frame are unchanged
    eye_refiner_shut_only: bool = False
    #: the pixel path does not blend the portrait's own (open) eye pixels into the frame near an eye cell whose
    #: token says shut (``eye_code``'s corner): there the eyes are what the decoder drew from the tokens
    #: (``Tokenizer.shut_map``, ``portrait_eyes``; needs ``ref_pixels`` and ``eye_code``). No weights; off =
    #: unchanged
    eye_unblend: bool = False
    #: semi-axes (x, y) of the ellipse around each aligned eye centre that ``eye_unblend`` holds back, as fractions
    #: of the side (``portrait_eyes``; each in (0, 0.25))
    eye_unblend_axes: tuple[float, ...] = (0.08, 0.05)
    #: the portrait's own mouth is hidden from the image side (``portrait_mouth``: a soft ellipse around the
    #: aligned mouth): the reference encoder sees the portrait with it filled with its own mean colour, and the
    #: pixel path blends none of the portrait's pixels there, so the mouth is drawn from the tokens alone. Why:
    #: the portrait's mouth was blended into every frame, and an open one (teeth, a tongue) stayed open over
    #: shut-mouth tokens. No weights, no new graph input; needs ``ref_pixels``. Off = unchanged
    mouth_hide: bool = False
    #: with ``mouth_hide``: also fill the ellipse in the reference encoder's input (True), or hide the portrait's
    #: mouth from the pixel path alone (False: the features still carry the portrait's lips and colour at 2 px
    #: and coarser, so the image side keeps the person's lips; the portrait's teeth or tongue are not pasted in)
    mouth_hide_features: bool = True
    #: semi-axes (x, y) of that ellipse as fractions of the side, each in (0, 0.25) (``portrait_mouth``)
    mouth_hide_axes: tuple[float, ...] = (0.17, 0.1)
    commitment: float = 0.25
    #: eye state in the eye cells' tokens (``train-tokenizer --eye-code``, ``eartalking/train/eye_code.py``):
    #: (open_max,) = a token whose FSQ digits are all above ``open_max`` means shut eyes; the image side and
    #: the step decoder were trained on tokens with the blink label written in. () = none. No graph reads it,
    #: except through ``eye_unblend``.
    eye_code: tuple[int, ...] = ()

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample

    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid

    @property
    def ref_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of each reference feature map, finest first (the portrait itself first with ``ref_pixels``)."""
        feats = [(c, self.image_size >> (i + 1), self.image_size >> (i + 1)) for i, c in enumerate(self.ref_channels)]
        return ([(3, self.image_size, self.image_size)] if self.ref_pixels else []) + feats


@dataclass
class AudioConfig:
    """Streaming audio encoder: raw 16 kHz PCM -> A audio tokens per video frame."""

    sample_rate: int = 16000
    fps: int = 25
    n_fft: int = 512
    hop: int = 160  # 10 ms; samples_per_frame / hop = tokens_per_frame
    n_mels: int = 80
    channels: int = 192
    dilations: tuple[int, ...] = (1, 2, 4, 8)  # valid (unpadded) causal convs, kernel 3
    dim: int = 128  # D_a, width of one audio token
    lookahead_frames: int = 2  # video frames of future audio each frame may hear (sets first-frame latency)

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate // self.fps  # 640

    @property
    def tokens_per_frame(self) -> int:
        return self.samples_per_frame // self.hop  # A = 4

    @property
    def receptive_hops(self) -> int:
        return 1 + 2 * sum(self.dilations)

    @property
    def context_samples(self) -> int:
        """Samples one audio token looks at: STFT window plus the conv stack's reach."""
        return self.n_fft + (self.receptive_hops - 1) * self.hop

    @property
    def left_context(self) -> int:
        """Extra samples before a chunk's first whole frame that the encoder needs.

        ``audio_encoder`` maps ``left_context + n * samples_per_frame`` samples to n frames of tokens.
        """
        return self.context_samples - self.hop


@dataclass
class DecoderConfig:
    """GPT-style step decoder with SFA (sink + window) attention and FCIC control tokens."""

    dim: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    window: int = 4  # W: frame blocks kept besides the sink
    n_controls: int = len(CONTROL_NAMES)
    rope_base: float = 10000.0
    dropout: float = 0.0
    top_k: int = 32  # used only when sampling (temperature > 0)
    #: temperature-0 token choice: "argmax" (the most likely token) or "code_mean" (round the expected FSQ
    #: digits under the predicted distribution: the token nearest the mean code, which moves with the
    #: probability mass instead of sticking to the modal, usually closed, mouth). Both are in the graph.
    greedy: str = "argmax"
    #: softmax temperature of ``code_mean`` (the expected digits are taken under softmax(logits / this)). Above
    #: 1 the mass of the less likely open-mouth tokens counts for more; a calibration of the trained head for
    #: unseen people and voices, chosen on a validation corpus (``scripts/code_mean_sweep.py``), set at ship
    #: time (``scripts/ship_checkpoint.py --code-mean-temperature``) and baked into the step graph.
    code_mean_temperature: float = 1.0
    #: token cells that ``code_mean`` reads at ``code_mean_cells_temperature`` instead (row-major on the token
    #: grid; () = none). For the eye cells of an eye-coded checkpoint (``train-tokenizer --eye-code``): a blink
    #: is one decisive token state, which the higher temperature chosen for the mouth's averaging spreads
    #: back out (``scripts/ship_checkpoint.py --eye-temperature``). Baked into the step graph.
    code_mean_cells: tuple[int, ...] = ()
    code_mean_cells_temperature: float = 1.0
    #: a motion gain for ``code_mean``: in these token cells (row-major; () = none) the expected FSQ digits are
    #: moved away from the portrait's token's digits by ``code_mean_gain`` before rounding, d' = r + gain (d - r).
    #: For the mouth cells (``scripts/ship_checkpoint.py --mouth-gain``): the step decoder's mouth tokens follow
    #: the audio (a linear readout of them reaches r ~0.7), but the image side draws small token moves as
    #: smaller mouth moves than dlib can see at 128 px. Like an expression scale in other talking-head tools.
    #: Other cells stay bit-identical; sampling (temperature > 0) does not use it. Baked into the step graph.
    code_mean_gain_cells: tuple[int, ...] = ()
    code_mean_gain: float = 1.0
    #: the eye cells of an eye-coded checkpoint (``tokenizer.eye_code``) picked as one binary state: at
    #: temperature 0 they are all shut (every FSQ digit above ``eye_state_open_max``) when their mean predicted
    #: mass on that shut corner is above ``eye_state_threshold`` (each cell then takes ``code_mean`` over the
    #: shut tokens), else all open: the portrait's own eye tokens (capped out of the corner, as the eye code
    #: does for open frames), the eyes every frame starts from. Why: ``code_mean`` averages digits, so 30%
    #: shut mass on top of open-eye tokens with high digits rounds into the shut corner, and for some faces the
    #: eyes read shut in every frame (``scripts/ship_checkpoint.py --eye-state-threshold``). () = none. Sampling
    #: (temperature > 0) does not use it. Baked into the step graph.
    eye_state_cells: tuple[int, ...] = ()
    eye_state_open_max: int = 0
    eye_state_threshold: float = 0.5
    #: the same threshold for frames whose blink control is absent (0 < it <= 1; 1 = the eyes are drawn open
    #: unless a blink is asked for). Why apart: with no control the trained head's shut mass is a per-face
    #: constant (no blink events; up to 0.68 on a face with glasses), so a threshold that lets every requested
    #: blink through would draw some faces' eyes shut for a whole audio-only session
    eye_state_absent_threshold: float = 0.5
    #: token cells (row-major on the token grid) whose *previous-frame* input is always the portrait's token:
    #: with the mouth and eyes here the decoder cannot copy them forward, so it must draw the mouth from the
    #: audio and the eyes from the blink control (trained with ``train --region-drop``). () = none.
    anchor_cells: tuple[int, ...] = ()
    #: an isolated group of block positions: these token cells' slots and these controls' tokens (names from
    #: CONTROL_NAMES) are read only by the group's own queries. No other query, in any layer, block or window
    #: slot, attends to them, so every other cell's logits are exactly what they would be without them, and
    #: the group's own rows (``train --eye-rows-only``: the eye slots and the blink control) can be trained
    #: without moving any other cell. The group still reads everything. A constant of the step graph. () = none.
    isolated_cells: tuple[int, ...] = ()
    isolated_controls: tuple[str, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass
class ModelConfig:
    name: str = "tiny"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    # ---- derived dimensions (the ones export writes into ONNX metadata) ----
    @property
    def tokens_per_frame(self) -> int:
        return self.tokenizer.tokens_per_frame

    @property
    def block_len(self) -> int:
        """Tokens in one frame block: controls | audio tokens | slots (prev-frame tokens + queries)."""
        return self.decoder.n_controls + self.audio.tokens_per_frame + self.tokens_per_frame

    @property
    def sink_len(self) -> int:
        return self.tokens_per_frame

    @property
    def window_len(self) -> int:
        return self.decoder.window * self.block_len

    def dims(self) -> dict[str, int | float | str]:
        """Flat dictionary of every dimension a deployment stage may need (ONNX metadata, manifest)."""
        t, a, d = self.tokenizer, self.audio, self.decoder
        return {
            "model_name": self.name,
            "image_size": t.image_size,
            "grid": t.grid,
            "tokens_per_frame": t.tokens_per_frame,
            "codebook_size": t.codebook_size,
            "ref_shapes": json.dumps(t.ref_shapes),
            "sample_rate": a.sample_rate,
            "fps": a.fps,
            "samples_per_frame": a.samples_per_frame,
            "audio_tokens_per_frame": a.tokens_per_frame,
            "audio_dim": a.dim,
            "audio_left_context": a.left_context,
            "lookahead_frames": a.lookahead_frames,
            "n_controls": d.n_controls,
            "control_names": ",".join(CONTROL_NAMES),
            "layers": d.layers,
            "heads": d.heads,
            "head_dim": d.head_dim,
            "dim": d.dim,
            "window": d.window,
            "block_len": self.block_len,
            "sink_len": self.sink_len,
            "window_len": self.window_len,
            "top_k": d.top_k,
        }

    # ---- (de)serialisation ----
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return _from_dict(cls, d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _from_dict(cls, d: dict):
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            v = _from_dict(type(default), v)
        elif isinstance(default, tuple):
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def tiny() -> ModelConfig:
    """The shipped CPU model: 128 px, 8x8 tokens, 4 layers of width 256, window 4."""
    return ModelConfig(name="tiny", tokenizer=TokenizerConfig(flow_at=16, ref_pixels=True),
                       decoder=DecoderConfig(greedy="code_mean"))


def base() -> ModelConfig:
    """A larger preset for GPU users who train on real data: 256 px, 16x16 tokens, 12 layers."""
    return ModelConfig(
        name="base",
        tokenizer=TokenizerConfig(
            image_size=256,
            downsample=16,
            codebook_size=2048,
            code_dim=128,
            enc_channels=(64, 128, 256, 512),
            ref_channels=(64, 128, 256, 512),
            dec_channels=(512, 256, 128, 64),
            attn_at=32,
            flow_at=32,
        ),
        audio=AudioConfig(channels=384, dim=256),
        decoder=DecoderConfig(dim=768, layers=12, heads=12, window=8, greedy="code_mean"),
    )


def test_small() -> ModelConfig:
    """A very small random-weight model for fast tests (same topology as tiny). Greedy stays argmax: a
    random head's near-uniform logits give code_mean one constant token, which would blunt token-parity tests
    (tests that cover code_mean sharpen the head)."""
    return ModelConfig(
        name="test_small",
        tokenizer=TokenizerConfig(
            image_size=64,
            downsample=16,
            codebook_size=64,
            code_dim=16,
            enc_channels=(8, 16, 16, 32),
            ref_channels=(8, 16, 16, 32),
            dec_channels=(32, 16, 16, 8),
            attn_at=8,
            flow_at=8,
            ref_pixels=True,
        ),
        audio=AudioConfig(channels=32, dim=32, dilations=(1, 2)),
        decoder=DecoderConfig(dim=64, layers=2, heads=2, window=3, top_k=8),
    )


PRESETS = {"tiny": tiny, "base": base, "test_small": test_small}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
