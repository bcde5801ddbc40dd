"""Audio codecs side by side: the bundled audio-world codec and the transformers adapters.

Part 1, speed (all in one process, one torch thread): audio-world and Mimi, EnCodec, DAC and X-codec
built from their default (released-model) configs at random init, saved with save_pretrained and
loaded through ``hf:PATH?codebooks=N`` specs. Encode, whole decode and stream decode (2 code frames
per push, as the engine does) real-time factors on the same clip, bitrate, frames/s, LM tokens/s,
decoder look-ahead. Random weights make these figures about speed only: they say nothing of quality.

Part 2, where the bundled codec stops: audio-world on real speech (pocketsphinx-testdata's LibriVox
read speech and asterisk-core-sounds-en-wav telephone prompts, with their transcripts), judged by
the installed recogniser (omniloom.train.asr_judge: Whisper tiny.en, else pocketsphinx), WER of
the originals and of the reconstructions.

    python bench/codecs.py --json docs/bench/codecs.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from omniloom.codecs import load_codec
from omniloom.train.codec_audio import evaluate, load_folder
from omniloom.utils.fileio import atomic_write_text

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
ASTERISK = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")

# name -> (transformers config class, config kwargs, spec options): the released models' shapes
ADAPTERS = {
    "mimi (kyutai/mimi shape)": ("MimiConfig", {}, "codebooks=8"),
    "encodec (24 kHz shape)": ("EncodecConfig", {}, "bandwidth=6.0"),
    "dac (dac_16khz shape)": ("DacConfig", {"downsampling_ratios": [2, 4, 5, 8], "n_codebooks": 12}, ""),
    "xcodec (hubert-librispeech shape)": ("XcodecConfig", {}, ""),
}
MODELS = {"MimiConfig": "MimiModel", "EncodecConfig": "EncodecModel", "DacConfig": "DacModel",
          "XcodecConfig": "XcodecModel"}


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def speed_row(name: str, codec, seconds: float, repeats: int) -> dict:
    """Real-time factors (wall time / audio time) on a noise-plus-chirp clip at the codec's rate."""
    n = int(seconds * codec.sample_rate)
    t = torch.arange(n) / codec.sample_rate
    wav = (0.3 * torch.sin(2 * torch.pi * 180 * t * (1 + t)) + 0.05 * torch.randn(n))[None]
    codes = codec.encode(wav)
    codec.decode(codes[:, :4])  # warm-up

    def stream() -> None:
        s = codec.stream_decoder()
        for i in range(0, codes.shape[1], 2):
            s.push(codes[:, i : i + 2])
        s.flush()

    return {"codec": name, "sample_rate": codec.sample_rate, "frame_rate": codec.frame_rate,
            "num_codebooks": codec.num_codebooks, "codebook_size": codec.codebook_size,
            "bits_per_second": codec.bits_per_second, "tokens_per_second": codec.frame_rate * codec.num_codebooks,
            "lookahead_ms": 1000 * codec.lookahead_samples / codec.sample_rate,
            "encode_rtf": _best(lambda: codec.encode(wav), repeats) / seconds,
            "decode_rtf": _best(lambda: codec.decode(codes), repeats) / seconds,
            "stream_decode_rtf": _best(stream, repeats) / seconds}


def build_adapter(cfg_name: str, kwargs: dict, directory: Path) -> Path:
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, MODELS[cfg_name])(getattr(transformers, cfg_name)(**kwargs))
    model.save_pretrained(directory)
    return directory


def real_speech(d: Path, n_asterisk: int) -> dict[str, Path]:
    """Links to the real clips with .txt transcripts under ``d``: data label -> folder."""
    lib, ast = d / "librivox", d / "asterisk"
    lib.mkdir()
    ast.mkdir()
    if LIBRIVOX.is_dir():
        for line in (LIBRIVOX / "transcription").read_text().splitlines():
            text, _, rest = line.replace("<s>", "").partition("</s>")
            wav = LIBRIVOX / f"{rest.strip(' ()')}.wav"
            if wav.is_file():
                (lib / wav.name).symlink_to(wav)
                (lib / f"{wav.stem}.txt").write_text(text.strip() + "\n")
    if ASTERISK.is_dir() and ASTERISK_TEXT.is_file():
        texts = {}
        for line in gzip.open(ASTERISK_TEXT, "rt", errors="replace"):
            key, sep, text = line.partition(":")
            if sep and not key.startswith(";") and "/" not in key:
                texts[key.strip()] = text.strip()
        names = sorted(k for k, v in texts.items() if (ASTERISK / f"{k}.wav").is_file() and len(v.split()) >= 4)
        rng = np.random.default_rng(0)
        for k in rng.choice(names, size=min(n_asterisk, len(names)), replace=False):
            (ast / f"{k}.wav").symlink_to(ASTERISK / f"{k}.wav")
            (ast / f"{k}.txt").write_text(texts[k] + "\n")
    return {"LibriVox read speech (pocketsphinx-testdata)": lib, "asterisk telephone prompts (8 kHz)": ast}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="clip length the speed figures are timed on")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--asterisk", type=int, default=20, help="asterisk prompts to judge")
    p.add_argument("--judge", default="auto", help="auto, whisper or pocketsphinx")
    p.add_argument("--json", default="bench_codecs.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)

    rows = [speed_row("audio-world (shipped)", load_codec("audio-world"), a.seconds, a.repeats)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (cfg_name, kwargs, opts) in ADAPTERS.items():
            d = build_adapter(cfg_name, kwargs, Path(tmp) / cfg_name)
            spec = f"hf:{d}" + (f"?{opts}" if opts else "")
            row = speed_row(name, load_codec(spec), a.seconds, a.repeats)
            row["spec_options"] = opts or "(default)"
            rows.append(row)
            print(f"timed {name}", flush=True)
    base = rows[0]
    print("\n| codec | rate | frames/s | codebooks | bits/s | tokens/s | look-ahead ms | encode RTF | decode RTF "
          "| stream decode RTF | stream decode vs audio-world |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['codec']} | {r['sample_rate']} | {r['frame_rate']:.4g} | {r['num_codebooks']} x {r['codebook_size']} "
              f"| {r['bits_per_second']:.0f} | {r['tokens_per_second']:.4g} | {r['lookahead_ms']:.0f} "
              f"| {r['encode_rtf']:.3g} | {r['decode_rtf']:.3g} | {r['stream_decode_rtf']:.3g} "
              f"| {r['stream_decode_rtf'] / base['stream_decode_rtf']:.0f}x |")

    real = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = real_speech(Path(tmp), a.asterisk)
        data = {label: load_folder(d, 16000) for label, d in folders.items() if any(d.iterdir())}
    for label, (clips, texts) in data.items():
        res = evaluate(load_codec("audio-world"), clips, texts, judge=a.judge, speed_seconds=1.0)
        real.append({"data": label, **{k: res.get(k) for k in ("n", "judge", "judge_note", "mel_distance",
                                                              "wer_original", "wer_reconstructed",
                                                              "wer_reconstruction_vs_original")}})
    print("\naudio-world on real speech\n\n| data | clips | judge | WER original | WER reconstructed "
          "| WER reconstruction vs original's transcript | mel distance |\n|---|---|---|---|---|---|---|")
    for r in real:
        f = lambda k: "-" if r.get(k) is None else f"{r[k]:.3f}"  # noqa: E731
        print(f"| {r['data']} | {r['n']} | {r.get('judge') or r.get('judge_note')} | {f('wer_original')} "
              f"| {f('wer_reconstructed')} | {f('wer_reconstruction_vs_original')} | {f('mel_distance')} |")
    out = {"speed": rows, "real_speech": real, "seconds": a.seconds, "threads": 1,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}}
    atomic_write_text(a.json, json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
