"""Train the streaming audio encoder and the SFA/FCIC step decoder (teacher forcing) on a corpus folder.

Usage: eartalking train --data corpus --tokenizer runs/tokenizer --out runs/decoder [--minutes 60]

The tokenizer (trained first, frozen here) turns every frame into its 8x8 tokens once. Each step takes B
windows of T consecutive frames: the portrait's tokens form the sink, each frame block holds its FCIC
controls (each dropped at random so the model animates from audio alone and obeys a control when given),
its audio tokens (computed from raw PCM with the same left context and lookahead as streaming, under
gain/noise/telephone-band augmentation so it hears any voice), and the previous frame's tokens (randomly
corrupted, so free-running generation does not drift). Loss: cross-entropy on the frame's tokens + an
auxiliary mouth-openness regression from the audio tokens (teaches lip-sync early). The output folder is a
full checkpoint (``config.json`` + ``model.safetensors``, tokenizer included) plus metrics and a loss plot.
``--init RUN`` starts from another run's weights with a fresh optimizer; with ``--loss-cells eyes`` only the
eye cells' tokens count and the audio encoder stays frozen, for teaching the blink control a tokenizer whose
eye tokens alone were retrained (``train-tokenizer --anchor-latent --blink-aux-weight``, or ``--eye-code``);
``--keep-others W`` then holds every other cell at the --init decoder's predictions (KL).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from eartalking.cli import UserError
from eartalking.config import CONTROL_NAMES, ModelConfig
from eartalking.train import common
from eartalking.train.decoder_tokens import clip_pcm

AUX = "aux_head.safetensors"
BLINK = CONTROL_NAMES.index("blink")
BLINKING = 0.2  # a frame whose blink label (0 open .. 1 closed) is above this counts as blinking
REGION_THRESHOLD = 0.2  # share of a token cell over the mouth/eyes that makes it a region cell


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="corpus folder")
    p.add_argument("--tokenizer", default="runs/tokenizer", help="folder written by train-tokenizer")
    p.add_argument("--out", default="runs/decoder", help="output checkpoint folder (resumed when present)")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--minutes", type=float, default=60.0, help="wall-time budget (0 = no limit)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=12, help="T: frames per training window (> window)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=common.env_threads_default())
    p.add_argument("--limit-clips", type=int, default=0)
    p.add_argument("--init-audio", default="",
                   help="audio encoder + aux head from `eartalking train-audio` (with --init: replaces its encoder)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--change-weight", type=float, default=0.0,
                   help="extra loss weight on tokens that differ from the previous frame's (0 = plain CE); "
                        "counters the copy-the-previous-frame optimum so the mouth follows the audio")
    p.add_argument("--region-drop", type=float, default=0.0,
                   help="per window, with this probability the previous-frame tokens over the mouth and eyes are "
                        "replaced by the portrait's: the model must draw the mouth from the audio and the eyes "
                        "from the blink control instead of copying them")
    p.add_argument("--region-weight", type=float, default=0.0,
                   help="extra loss weight on mouth/eye tokens (0 = plain CE): weight = 1 + this x region share")
    p.add_argument("--blink-weight", type=float, default=0.0,
                   help="extra loss weight on the eye cells in frames whose blink label is above 0.2 (0 = none): "
                        "blinks are ~5%% of frames and 4 of 64 cells, too rare for plain CE to learn the control")
    p.add_argument("--loss-cells", choices=("all", "eyes"), default="all",
                   help="cells whose tokens the loss counts: eyes = only the eye cells (with --init, to teach the "
                        "blink control the eye tokens of a re-trained tokenizer while the mouth's stay as learned; "
                        "the audio encoder is then frozen)")
    p.add_argument("--keep-others", type=float, default=0.0, metavar="WEIGHT",
                   help="with --loss-cells eyes and --init: add WEIGHT x the KL divergence from the --init decoder's "
                        "token distributions to this one's on every other cell, so teaching the eyes does not move "
                        "what the mouth and the rest learned (eyes-only CE alone lowered the held-out accuracy of "
                        "the other cells from 0.61 to 0.56 in 600 steps); 0 = off")
    p.add_argument("--eye-rows-only", action="store_true",
                   help="with --loss-cells eyes and --init: train only the eye cells' slot queries and the blink "
                        "control's embeddings (their rows of slot_query, control_weight, type_embedding, "
                        "null_embedding; no weight decay): every other weight, the head and all layers included, "
                        "stays as loaded, so the mouth can move only through attention to those rows")
    p.add_argument("--isolate-eyes", action="store_true",
                   help="train (and record in the run's config) a decoder whose eye cells and blink control form an "
                        "isolated group (decoder.isolated_cells / isolated_controls): no other cell's query reads "
                        "them, so with --eye-rows-only the other cells' outputs stay exactly as loaded")
    p.add_argument("--init", default="",
                   help="start from this decoder run's weights (model.safetensors + aux head) with a fresh optimizer "
                        "and step 0; the tokenizer still comes from --tokenizer")
    p.add_argument("--freeze-audio", action="store_true",
                   help="keep the audio encoder (and its openness head) as loaded (--init, --init-audio): only the "
                        "step decoder trains")
    p.add_argument("--max-corrupt", type=float, default=0.3,
                   help="previous-frame tokens are replaced at random with a per-window rate in [0, this]")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="bfloat16 autocast: auto = on CUDA, and on CPUs with avx512_bf16/AMX (~1.5x faster)")


@torch.no_grad()
def tokenize_clips(tok, clips: list[common.MemClip], device: torch.device) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frame tokens int64 [T,N] and portrait tokens [N] of every clip (frozen tokenizer).

    With ``tok.cfg.eye_code`` each frame's blink label is written into its eye cells' tokens
    (``train.eye_code``); the portrait's tokens stay the encoder's own, as at inference."""
    from eartalking.train.eye_code import tokenizer_eye_code

    frames, portraits = [], []
    for c in tqdm(clips, desc="tokenizing clips", unit="clip"):
        toks = [tok.encode(common.to_image_tensor(c.frames[i:i + 64], device)).cpu()
                for i in range(0, len(c.frames), 64)]
        ft = torch.cat(toks)
        blink = c.controls[:, BLINK] if c.controls.shape[1] > BLINK else np.full(len(ft), np.nan)
        frames.append(tokenizer_eye_code(tok, ft, torch.from_numpy(np.asarray(blink, np.float32))).numpy())
        portraits.append(tok.encode(common.to_image_tensor(c.portrait[None], device))[0].cpu().numpy())
    return frames, portraits


class WindowSampler:
    """Random training windows: per-frame tokens, previous tokens, controls, openness and the PCM span.

    With ``tokens=None`` (audio pretraining) only controls, openness and PCM are returned."""

    def __init__(self, cfg: ModelConfig, clips, tokens, portraits, T: int, seed: int):
        a = cfg.audio
        self.spf, self.la, self.left = a.samples_per_frame, a.lookahead_frames, a.left_context
        self.clips = [i for i, c in enumerate(clips) if len(c.frames) >= T]
        if not self.clips:
            raise SystemExit(f"no clip has {T} frames; lower --frames")
        self.c, self.tok, self.por, self.T = clips, tokens, portraits, T
        self.rng = np.random.default_rng(seed)

    def pcm_span(self, clip: common.MemClip, t0: int) -> np.ndarray:
        """Samples the audio encoder needs for video frames t0..t0+T-1 (stream coordinates, zero padded)."""
        return clip_pcm(clip, self.spf, self.la, self.left, t0, self.T)

    def batch(self, B: int) -> dict[str, np.ndarray]:
        keys = ("controls", "openness", "pcm") + (("ref", "tokens", "prev") if self.tok is not None else ())
        out: dict[str, list] = {k: [] for k in keys}
        for _ in range(B):
            i = self.clips[self.rng.integers(len(self.clips))]
            c = self.c[i]
            t0 = 0 if self.rng.random() < 0.15 else int(self.rng.integers(0, len(c.frames) - self.T + 1))
            if self.tok is not None:
                toks = self.tok[i]
                cur = toks[t0:t0 + self.T]
                first = self.por[i] if t0 == 0 else toks[t0 - 1]
                out["ref"].append(self.por[i])
                out["tokens"].append(cur)
                out["prev"].append(np.concatenate([first[None], cur[:-1]], 0))
            out["controls"].append(c.controls[t0:t0 + self.T])
            out["openness"].append(c.openness[t0:t0 + self.T])
            out["pcm"].append(self.pcm_span(c, t0))
        return {k: np.stack(v) for k, v in out.items()}


def augment_audio(pcm: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-row gain (-20..+10 dB, clipped), telephone band-limit (p=0.3), white/brown noise at 5-30 dB SNR."""
    B, S = pcm.shape
    dev = pcm.device
    u = lambda *s: torch.rand(*s, generator=gen).to(dev)  # noqa: E731
    gain = 10 ** ((u(B, 1) * 30 - 20) / 20)
    x = pcm * gain
    spec = torch.fft.rfft(x, dim=1)
    f = torch.fft.rfftfreq(S, 1 / 16000).to(dev)
    tel = (u(B, 1) < 0.3) & ~((f >= 300) & (f <= 3400))[None]
    x = torch.fft.irfft(spec.masked_fill(tel, 0), n=S, dim=1)
    noisy = u(B, 1) < 0.6
    white = torch.randn(B, S, generator=gen).to(dev)
    brown = torch.cumsum(white, 1)
    brown = brown - brown.mean(1, keepdim=True)
    noise = torch.where(u(B, 1) < 0.5, white, brown)
    p_sig = x.pow(2).mean(1, keepdim=True).clamp_min(1e-8)
    p_noise = noise.pow(2).mean(1, keepdim=True).clamp_min(1e-8)
    snr = 10 ** ((u(B, 1) * 25 + 5) / 10)
    x = x + noisy * noise * torch.sqrt(p_sig / (p_noise * snr))
    return x.clamp(-1.0, 1.0)


def region_tokens(image_size: int, grid: int, device: torch.device) -> torch.Tensor:
    """float [grid*grid] in 0..1: how much of each token's cell is mouth or eyes (the tokenizer's loss
    weights, pooled to the token grid and scaled so the strongest cell is 1)."""
    from eartalking.train.tokenizer import region_weights

    w = F.adaptive_avg_pool2d(region_weights(image_size, device) - 1.0, grid)[0, 0].flatten()
    return (w / w.max().clamp_min(1e-6)).clamp(0, 1)


def region_cells(cfg: ModelConfig) -> list[int]:
    """Token cells (row-major) over the mouth and eyes: the ones ``--region-drop`` replaces in training and
    the ``anchor_cells`` a checkpoint trained that way is shipped with (scripts/ship_checkpoint.py)."""
    t = cfg.tokenizer
    r = region_tokens(t.image_size, t.grid, torch.device("cpu"))
    return [int(i) for i in torch.nonzero(r > REGION_THRESHOLD).flatten()]


def eye_rows_only(decoder, cells: list[int]) -> list[torch.nn.Parameter]:
    """Freeze ``decoder`` but for the rows ``cells`` of ``slot_query`` [N, D] and the blink control's row of
    ``control_weight``, ``type_embedding`` and ``null_embedding`` [C, D] (``train --eye-rows-only``): the other
    rows' gradients are zeroed by hooks, so with no weight decay they stay bit-identical. -> the four
    parameters to optimise."""
    decoder.requires_grad_(False)
    rows = {"slot_query": list(cells), "control_weight": [BLINK], "type_embedding": [BLINK],
            "null_embedding": [BLINK]}
    params = []
    for name, keep in rows.items():
        w = getattr(decoder, name)
        mask = torch.zeros(w.shape[0], 1, dtype=w.dtype, device=w.device)
        mask[keep] = 1.0
        w.requires_grad_(True)
        w.register_hook(lambda g, m=mask: g * m)
        params.append(w)
    return params


def isolate_eyes(cfg: ModelConfig) -> None:
    """Make the eye cells and the blink control the decoder's isolated group (in place): nothing else reads
    them (``decoder.isolated_cells`` / ``isolated_controls``), so the mouth cannot move when they are trained."""
    cfg.decoder.isolated_cells, cfg.decoder.isolated_controls = tuple(eye_cells(cfg)), ("blink",)


def eye_cells(cfg: ModelConfig) -> list[int]:
    """The upper half of ``region_cells``: the token cells over the eyes (the rest are the mouth's)."""
    g = cfg.tokenizer.grid
    return [c for c in region_cells(cfg) if c // g < g // 2]


def mouth_cells(cfg: ModelConfig) -> list[int]:
    """The lower half of ``region_cells``: the token cells over the mouth (tiny: 42-45, 51, 52)."""
    g = cfg.tokenizer.grid
    return [c for c in region_cells(cfg) if c // g >= g // 2]


def control_masks(controls: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Known labels kept with p=0.5 per (window, control), all dropped for 25% of windows; NaN -> absent."""
    B, T, C = controls.shape
    known = ~torch.isnan(controls)
    keep = (torch.rand(B, 1, C, generator=gen) < 0.5).to(controls.device)
    keep &= (torch.rand(B, 1, 1, generator=gen) > 0.25).to(controls.device)
    mask = (known & keep).float()
    return torch.nan_to_num(controls), mask


@torch.no_grad()
def evaluate(model, sampler: WindowSampler, device: torch.device, batches: int = 4,
             in_region: torch.Tensor | None = None, in_eyes: torch.Tensor | None = None) -> dict[str, float]:
    """Teacher-forced token accuracy and CE on held-out windows (no augmentation, no controls);
    ``eval_acc_changed`` is the accuracy on tokens that differ from the previous frame's (copying scores 0),
    ``eval_acc_region`` the accuracy over the mouth and eye cells, ``eval_acc_blink`` the accuracy over the
    eye cells in blinking frames with only the blink control given."""
    model.eval()
    acc, ce, acc_changed, acc_region, acc_blink = [], [], [], [], []
    for _ in range(batches):
        b = {k: torch.from_numpy(v).to(device) for k, v in sampler.batch(8).items()}
        audio = model.audio(b["pcm"])
        ctrl = torch.nan_to_num(b["controls"])
        logits = model.decoder.forward_train(b["ref"], audio, ctrl, torch.zeros_like(ctrl), b["prev"])
        hit = logits.argmax(-1) == b["tokens"]
        acc.append(float(hit.float().mean()))
        changed = b["tokens"] != b["prev"]
        if changed.any():
            acc_changed.append(float(hit[changed].float().mean()))
        if in_region is not None and in_region.any():
            acc_region.append(float(hit[..., in_region].float().mean()))
        ce.append(float(F.cross_entropy(logits.flatten(0, 2), b["tokens"].flatten())))
        blinking = ctrl[..., BLINK] > BLINKING  # [B,T] (ctrl has NaN -> 0)
        if in_eyes is not None and blinking.any():
            only = torch.zeros_like(ctrl)
            only[..., BLINK] = 1.0
            anchored = in_region if in_region is not None else in_eyes  # as shipped: region cells anchored
            prev = torch.where(anchored, b["ref"][:, None, :].expand_as(b["prev"]), b["prev"])
            lb = model.decoder.forward_train(b["ref"], audio, ctrl, only, prev)
            sel = blinking[..., None] & in_eyes
            acc_blink.append(float((lb.argmax(-1) == b["tokens"])[sel].float().mean()))
    model.train()
    return {"eval_acc": float(np.mean(acc)), "eval_ce": float(np.mean(ce)),
            "eval_acc_changed": float(np.mean(acc_changed)) if acc_changed else float("nan"),
            "eval_acc_region": float(np.mean(acc_region)) if acc_region else float("nan"),
            "eval_acc_blink": float(np.mean(acc_blink)) if acc_blink else float("nan")}


def run(args: argparse.Namespace) -> int:
    from eartalking.model import checkpoint
    from eartalking.model.model import EARTalking

    torch.manual_seed(args.seed)
    device = common.pick_device(args.device, args.threads)
    tdir, out = Path(args.tokenizer), Path(args.out)
    if not (tdir / "tokenizer.safetensors").is_file():
        raise SystemExit(f"{tdir}/tokenizer.safetensors not found: run `eartalking train-tokenizer` first")
    cfg = ModelConfig.load(tdir / "config.json")
    if args.isolate_eyes:
        isolate_eyes(cfg)
    if (out / checkpoint.WEIGHTS_FILE).is_file() and (out / "config.json").is_file():  # a resume
        was = ModelConfig.load(out / "config.json").decoder
        if (was.isolated_cells, was.isolated_controls) != (cfg.decoder.isolated_cells, cfg.decoder.isolated_controls):
            raise UserError(f"{out} was trained with isolated cells {list(was.isolated_cells)} and controls "
                            f"{list(was.isolated_controls)}, this run asks for {list(cfg.decoder.isolated_cells)} "
                            f"and {list(cfg.decoder.isolated_controls)}: resume with the same --isolate-eyes")
    out.mkdir(parents=True, exist_ok=True)
    model = EARTalking(cfg).to(device)
    if (out / checkpoint.WEIGHTS_FILE).is_file():
        model.load_state_dict(load_file(str(out / checkpoint.WEIGHTS_FILE), device=str(device)))
    elif args.init:
        init = Path(args.init)
        if not (init / checkpoint.WEIGHTS_FILE).is_file():
            raise UserError(f"--init {args.init}: no {checkpoint.WEIGHTS_FILE} there (give a `train` run folder)")
        # its tokenizer may predate parts of --tokenizer's (aligner, pixel path): those come from --tokenizer
        state = {k: v for k, v in load_file(str(init / checkpoint.WEIGHTS_FILE), device=str(device)).items()
                 if not k.startswith("tokenizer.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith("tokenizer.")] + list(unexpected)
        if bad:
            raise UserError(f"--init {args.init}: weights do not fit this preset ({len(bad)} keys differ, "
                            f"e.g. {bad[:3]})")
    model.tokenizer.load_state_dict(load_file(str(tdir / "tokenizer.safetensors"), device=str(device)))
    model.tokenizer.requires_grad_(False).eval()
    if args.eye_rows_only and (args.loss_cells != "eyes" or not args.init):
        raise UserError("--eye-rows-only trains the eye rows of an --init decoder: it needs --loss-cells eyes "
                        "and --init")
    teacher = None
    if args.keep_others > 0:
        if args.loss_cells != "eyes" or not args.init:
            raise UserError("--keep-others holds the non-eye cells at the --init decoder's predictions: it needs "
                            "--loss-cells eyes and --init")
        import copy

        teacher = copy.deepcopy(model.decoder).requires_grad_(False).eval()
    A, Da = cfg.audio.tokens_per_frame, cfg.audio.dim
    aux = torch.nn.Linear(A * Da, 1).to(device)
    if (out / AUX).is_file():
        aux.load_state_dict(load_file(str(out / AUX), device=str(device)))
    else:
        if args.init and (Path(args.init) / AUX).is_file():
            aux.load_state_dict(load_file(str(Path(args.init) / AUX), device=str(device)))
        if args.init_audio:  # over --init's audio encoder: a decoder re-learns to read a better one
            from eartalking.train.audio import load_pretrained

            load_pretrained(args.init_audio, model.audio, aux, device)
    size = cfg.tokenizer.image_size
    train = common.load_corpus(args.data, "train", args.limit_clips, size=size)
    held = common.load_heldout(args.data, train, 24, size=size)
    sampler = WindowSampler(cfg, train, *tokenize_clips(model.tokenizer, train, device), args.frames, args.seed)
    held_sampler = WindowSampler(cfg, held, *tokenize_clips(model.tokenizer, held, device), args.frames, 7)
    params = list(model.decoder.parameters())
    decay = 0.01
    if args.eye_rows_only:
        params, decay = eye_rows_only(model.decoder, eye_cells(cfg)), 0.0
    train_audio = args.loss_cells == "all" and not args.freeze_audio
    if train_audio:
        params += list(model.audio.parameters()) + list(aux.parameters())
    else:  # the audio encoder, which the mouth is drawn from, stays as loaded
        model.audio.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=decay)
    step = common.load_state(out, opt, device)
    gen = torch.Generator().manual_seed(args.seed + step)
    sampler.rng = np.random.default_rng(args.seed + step)
    log = common.MetricsLog(out / "metrics.jsonl")
    budget = common.Budget(args.steps, args.minutes)
    amp = common.use_bf16(device, args.bf16)
    K = cfg.tokenizer.codebook_size
    region = region_tokens(cfg.tokenizer.image_size, cfg.tokenizer.grid, device)  # [N]
    in_region = torch.zeros_like(region, dtype=torch.bool)  # mouth/eye cells whose previous tokens
    in_region[region_cells(cfg)] = True  # --region-drop replaces
    in_eyes = torch.zeros_like(in_region)
    in_eyes[eye_cells(cfg)] = True
    print(f"decoder: {model.param_counts()} params, {len(train)} train clips, device {device}, from step {step}")
    bar = tqdm(total=args.steps, initial=step, desc="train", unit="step")
    model.audio.train(train_audio)
    model.decoder.train()
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = common.cosine_lr(step, args.steps, args.lr)
        b = {k: torch.from_numpy(v).to(device) for k, v in sampler.batch(args.batch).items()}
        pcm = augment_audio(b["pcm"], gen)
        ctrl, mask = control_masks(b["controls"], gen)
        prev = b["prev"].clone()
        p = torch.rand(prev.shape[0], 1, 1, generator=gen).to(device) * args.max_corrupt
        noise = torch.rand(prev.shape, generator=gen).to(device) < p
        prev = torch.where(noise, torch.randint(0, K, prev.shape, generator=gen).to(device), prev)
        if args.region_drop > 0:
            drop = (torch.rand(prev.shape[0], 1, 1, generator=gen) < args.region_drop).to(device) & in_region
            prev = torch.where(drop, b["ref"][:, None, :].expand_as(prev), prev)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            audio = model.audio(pcm)  # [B, T, A, Da]
            logits = model.decoder.forward_train(b["ref"], audio, ctrl, mask, prev)
            pred_open = aux(audio.flatten(2)).squeeze(-1)
        ce_tok = F.cross_entropy(logits.float().flatten(0, 2), b["tokens"].flatten(), reduction="none")
        weight = 1.0 + args.change_weight * (b["tokens"] != b["prev"]).float() + args.region_weight * region
        if args.blink_weight > 0:
            blinking = torch.nan_to_num(b["controls"][..., BLINK], nan=0.0) > BLINKING  # [B,T]
            weight = weight + args.blink_weight * (blinking[..., None] & in_eyes).float()
        if args.loss_cells == "eyes":
            weight = weight * in_eyes.float()
        weight = weight.flatten()
        ce = (ce_tok * weight).sum() / weight.sum()
        keep = torch.zeros((), device=device)
        if teacher is not None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                t_logits = teacher.forward_train(b["ref"], audio, ctrl, mask, prev)
            others = ~in_eyes  # [N]
            t_logp = F.log_softmax(t_logits.float()[..., others, :], -1)
            s_logp = F.log_softmax(logits.float()[..., others, :], -1)
            keep = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
        known = ~torch.isnan(b["openness"])
        aux_loss = (F.mse_loss(pred_open.float()[known], b["openness"][known]) if known.any()
                    else pred_open.sum() * 0)
        loss = ce + 2.0 * aux_loss + args.keep_others * keep
        common.optimizer_step(opt, loss, params)
        step += 1
        bar.update(1)
        if step % 100 == 0:
            acc = float((logits.argmax(-1) == b["tokens"]).float().mean())
            row = {"step": step, "loss": loss.item(), "ce": ce.item(), "aux": aux_loss.item(), "acc": acc}
            if teacher is not None:
                row["keep_kl"] = keep.item()
            if step % args.eval_every == 0:
                row.update(evaluate(model, held_sampler, device, in_region=in_region, in_eyes=in_eyes))
            bar.set_postfix(ce=f"{row['ce']:.3f}", acc=f"{acc:.3f}")
            log.write(**row)
        if step % 1000 == 0:
            _save(out, model, cfg, aux, opt, step)
    bar.close()
    _save(out, model, cfg, aux, opt, step)
    final = evaluate(model, held_sampler, device, batches=8, in_region=in_region, in_eyes=in_eyes)
    final["step"] = step
    log.write(**final)
    (out / "summary.json").write_text(json.dumps(final, indent=1))
    log.plot(out / "loss.png", ("loss", "ce", "acc", "aux", "eval_acc", "eval_acc_changed"))
    print(f"decoder: step {step}, held-out token accuracy {final['eval_acc']:.3f}, CE {final['eval_ce']:.3f}")
    return 0


def _save(out: Path, model, cfg, aux, opt, step: int) -> None:
    from eartalking.model import checkpoint

    checkpoint.save(out, model, cfg, metadata={"step": str(step)})
    save_file({k: v.detach().cpu() for k, v in aux.state_dict().items()}, str(out / AUX))
    common.save_state(out, step, opt)
