"""Train and evaluate the FSQ image codec (``omniloom codec train|eval image``).

Data: ``world`` renders fresh random shapes-world scenes (and video frames) on the fly; a folder
of PNG/JPEG files is resized (shorter side) and center-cropped to the codec resolution.
Training: L1 + L2 + image-gradient loss, AdamW with warmup + cosine, atomic resumable checkpoints
(``<out>/ckpt.pt``), a loss curve (``<out>/loss.png``) and the final codec (``config.json`` +
``model.safetensors``) in ``<out>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from omniloom.codecs.image import ImageCodec, ImageCodecConfig, image_codec_config, resize_crop
from omniloom.codecs.image import load_image_file as load_image
from omniloom.world.parse_image import FG_THRESHOLD
from ..utils.fileio import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# ---- data ------------------------------------------------------------------------------------


def list_image_files(directory: str | Path) -> list[Path]:
    """PNG/JPEG files under ``directory`` (recursive, sorted); ValueError when missing or empty."""
    d = Path(directory)
    if not d.exists():
        raise ValueError(f"image folder {d} does not exist")
    if not d.is_dir():
        raise ValueError(f"image folder {d} is not a directory")
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"image folder {d} has no PNG/JPEG files")
    return files


def world_images(n: int, rng: np.random.Generator, video_share: float = 0.2) -> np.ndarray:
    """``n`` fresh shapes-world renders -> (n, 3, 64, 64) float32 in [0, 1] (scenes, some video frames)."""
    from omniloom.world.render import render_scene, render_video
    from omniloom.world.scene import DIRECTIONS, sample_scene

    out = np.empty((n, 3, 64, 64), dtype=np.float32)
    i = 0
    while i < n:
        if rng.random() < video_share:
            obj = sample_scene(rng, n=1, compositional=bool(rng.random() < 0.3)).objects[0]
            frames = render_video(obj, DIRECTIONS[int(rng.integers(len(DIRECTIONS)))], rng)
            for f in frames[: n - i]:
                out[i] = f.transpose(2, 0, 1) / 255.0
                i += 1
        else:
            scene = sample_scene(rng, compositional=bool(rng.random() < 0.3))
            out[i] = render_scene(scene, rng).transpose(2, 0, 1) / 255.0
            i += 1
    return out


def batches(data: str, resolution: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless (B, 3, R, R) batches from ``world`` or a folder (shuffled, random flips for folders)."""
    rng = np.random.default_rng(seed)
    if data == "world":
        if resolution != 64:
            raise ValueError(f"--data world renders 64x64 images; the codec resolution is {resolution}")
        while True:
            yield torch.from_numpy(world_images(batch, rng))
    files = list_image_files(data)
    cache: dict[int, np.ndarray] = {}
    while True:
        idx = rng.integers(len(files), size=batch)
        imgs = []
        for j in idx:
            if int(j) not in cache:
                cache[int(j)] = load_image(files[int(j)], resolution)
            im = cache[int(j)]
            imgs.append(im[:, :, ::-1] if rng.random() < 0.5 else im)
        yield torch.from_numpy(np.stack(imgs).copy())


# ---- losses and metrics ----------------------------------------------------------------------


def recon_loss(recon: torch.Tensor, x: torch.Tensor, grad_weight: float, fg_weight: float = 0.0) -> torch.Tensor:
    """L1 + L2 + L1 on horizontal/vertical image gradients (sharp edges).

    ``fg_weight`` > 0 weighs lit pixels (any channel above 0.02) ``1 + fg_weight`` times: on mostly
    black renders (the world) this gets the codec past the "all black" plateau much sooner.
    """
    err = recon - x
    w = 1.0 + fg_weight * (x.amax(dim=1, keepdim=True) > 0.02).float() if fg_weight > 0 else 1.0  # (B, 1, H, W)
    loss = (w * err.abs()).mean() + (w * err**2).mean()
    if grad_weight > 0:
        dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
        dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
        loss = loss + grad_weight * (F.l1_loss(dx(recon), dx(x)) + F.l1_loss(dy(recon), dy(x)))
    return loss


FG_LEVEL = FG_THRESHOLD / 255  # the world scene parser's foreground level, on the [0, 1] scale


def outline_loss(recon: torch.Tensor, x: torch.Tensor, tau: float = 0.03) -> torch.Tensor:
    """Where the outlines of shapes fall: soft-threshold cross-entropy at two intensity levels.

    An outline is read where an image's brightness (max over channels) crosses a level: the
    foreground level (dark gaps between shapes must stay below it) and half of the shape's own
    brightness (corners and points of a shape's solid body). Per-pixel L1/L2 cost little for a
    rounded corner or a faint bridge between two shapes; this loss prices each pixel on the wrong
    side of either level, most near the level (``tau`` sets how soft the step is). The half level
    takes the shape's brightness as the brightest target pixel within 3 px.
    """
    iy, ix = recon.amax(dim=1), x.amax(dim=1)  # (B, H, W) brightness
    fg = F.binary_cross_entropy_with_logits((iy - FG_LEVEL) / tau, (ix > FG_LEVEL).float())
    ref = F.max_pool2d(ix[:, None], 7, stride=1, padding=3)[:, 0]  # (B, H, W) nearby shape brightness
    near = (ref > FG_LEVEL).float()
    half = F.binary_cross_entropy_with_logits((iy - 0.5 * ref) / tau, (ix >= 0.5 * ref).float(), reduction="none")
    return fg + (half * near).sum() / near.sum().clamp_min(1.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1]: (B, 3, H, W) x2 -> (B,)."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: Gaussian window, K1=0.01, K2=0.03, data range 1): (B,3,H,W) x2 -> (B,)."""
    c = a.shape[1]
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()  # (C, 1, w, w)
    blur = lambda t: F.conv2d(t, k, groups=c)  # noqa: E731  valid filtering, as in the reference
    mu_a, mu_b = blur(a), blur(b)
    s_aa = blur(a * a) - mu_a**2
    s_bb = blur(b * b) - mu_b**2
    s_ab = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))
    return m.flatten(1).mean(1)


def code_stats(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Share of the codebook used and perplexity of the code histogram."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts / counts.sum()
    ent = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codes_used": float((counts > 0).float().mean()), "perplexity": float(ent.exp())}


# ---- training --------------------------------------------------------------------------------


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="'world' (fresh renders) or a folder of PNG/JPEG files")
    p.add_argument("--out", required=True, help="output directory (checkpoint, loss.png, the codec)")
    p.add_argument("--config", default="world", help="named codec config: world | photo-256 | tiny")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--grad-weight", type=float, default=0.5, help="weight of the image-gradient L1 loss")
    p.add_argument("--fg-weight", type=float, default=0.0, help="extra loss weight of lit pixels (world: 4)")
    p.add_argument("--outline-weight", type=float, default=0.0,
                   help="weight of the outline loss (soft-threshold cross-entropy at the foreground level and at "
                        "half a shape's brightness: sharp corners, clean gaps between shapes)")
    p.add_argument("--init", default=None, metavar="CODEC",
                   help="start from this codec (a shipped name such as image-world, or a codec directory)")
    p.add_argument("--decoder-only", action="store_true",
                   help="freeze the encoder (and so every code): improve reconstructions without invalidating "
                        "token shards or models trained on the codes; needs --init")
    p.add_argument("--decoder-res-blocks", default=None, metavar="N,N,...",
                   help="residual blocks per resolution level in the decoder (highest resolution first, one "
                        "count per level of the config), when it should differ from the encoder's; with --init "
                        "the decoder grows from the given codec's, each added block starting as the identity")
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def parse_counts(text: str, flag: str) -> list[int]:
    """'1,1,1,2' -> [1, 1, 1, 2]; ValueError naming ``flag`` on anything else."""
    try:
        counts = [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated counts such as 1,1,1,2, got {text!r}") from None
    if any(c < 0 for c in counts):
        raise ValueError(f"{flag}: counts must be >= 0, got {text!r}")
    return counts


def _save_ckpt(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _plot(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.6, alpha=0.5, label="loss")
    if len(losses) >= 50:
        k = 50
        ax.plot(np.arange(k, len(losses) + 1), np.convolve(losses, np.ones(k) / k, mode="valid"), label="mean of 50")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("reconstruction loss")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def train(args: argparse.Namespace) -> dict:
    """Train (or resume) an image codec; returns the final metrics on a held-out batch."""
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch < 1:
        raise ValueError(f"--steps and --batch must be positive, got {args.steps} and {args.batch}")
    cfg = image_codec_config(args.config)
    if args.data != "world":
        list_image_files(args.data)  # clear error before anything is written
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"
    torch.manual_seed(args.seed)
    decoder_only, init = args.decoder_only, args.init
    dec_blocks = parse_counts(args.decoder_res_blocks, "--decoder-res-blocks") if args.decoder_res_blocks else None
    if decoder_only and not init and not ckpt_path.exists():
        raise ValueError("--decoder-only keeps an existing encoder: give --init CODEC (e.g. image-world)")
    if init:
        from ..codecs.base import load_codec

        codec = load_codec(init)
        if not isinstance(codec, ImageCodec):
            raise ValueError(f"--init {init} is not an image codec")
        codec = codec.float().to(args.device)
        if dec_blocks is not None and dec_blocks != codec.cfg.dec_res_blocks:
            codec = codec.with_decoder_res_blocks(dec_blocks)
        cfg = codec.cfg
    else:
        if dec_blocks is not None:
            cfg = ImageCodecConfig.from_dict({**cfg.to_dict(), "decoder_res_blocks": dec_blocks})
        codec = ImageCodec(cfg).to(args.device)
    if decoder_only:
        codec.encoder.requires_grad_(False)
    trained = [p for p in codec.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=args.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    step, losses = 0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=args.device, weights_only=True)
        if state["config"] != codec.config_dict():
            raise ValueError(f"{ckpt_path} was written for another codec config; use a new --out")
        if bool(state.get("decoder_only", False)) != decoder_only:
            raise ValueError(f"{ckpt_path} was trained {'with' if not decoder_only else 'without'} --decoder-only; "
                             "resume it the same way or use a new --out")
        codec.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, losses = int(state["step"]), list(state["losses"])
        print(f"resuming from {ckpt_path} at step {step}")

    def lr_at(s: int) -> float:
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        t = (s - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    data = batches(args.data, cfg.resolution, args.batch, seed=args.seed * 1000 + step)
    val = next(batches(args.data, cfg.resolution, 64, seed=10**6 + args.seed)).to(args.device)
    def train_mode() -> None:
        codec.train()
        if decoder_only:
            codec.encoder.eval()  # frozen: no normalisation statistics move either

    train_mode()
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, desc="codec", dynamic_ncols=True)
    t0 = time.time()
    while step < args.steps:
        x = next(data).to(args.device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        recon, _ = codec(x)
        loss = recon_loss(recon, x, args.grad_weight, args.fg_weight)
        if args.outline_weight > 0:
            loss = loss + args.outline_weight * outline_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if step % args.ckpt_every == 0 or step == args.steps:
            m = evaluate_batch(codec, val)
            bar.write(
                f"step {step} loss {np.mean(losses[-50:]):.5f} val psnr {m['psnr']:.2f} dB "
                f"codes used {m['codes_used']:.3f} ({time.time() - t0:.0f}s)"
            )
            _save_ckpt(ckpt_path, {"model": codec.state_dict(), "opt": opt.state_dict(), "step": step,
                                   "losses": losses, "config": codec.config_dict(), "decoder_only": decoder_only})
            _plot(losses, out / "loss.png")
            codec.eval()
            codec.save(out)
            train_mode()
    bar.close()
    codec.eval()
    metrics = evaluate_batch(codec, val)
    codec.save(out)
    return metrics


@torch.no_grad()
def evaluate_batch(codec: ImageCodec, x: torch.Tensor) -> dict[str, float]:
    codec.eval()
    codes = codec.encode(x)
    y = codec.decode(codes)
    return {"psnr": float(psnr(y, x).mean()), **code_stats(codes, codec.codebook_size)}


def run_train(args: argparse.Namespace) -> int:
    m = train(args)
    print(json.dumps({k: round(v, 4) for k, v in m.items()}))
    print(f"codec written to {args.out}")
    return 0


# ---- evaluation ------------------------------------------------------------------------------


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", default=None, metavar="SPEC",
                   help="codec spec: shipped name (image-world), codec folder, or hf:DIR[?size=PIXELS] "
                        "(default image-world)")
    p.add_argument("--codec", default=None, help="the codec spec, as a flag (same as SPEC)")
    p.add_argument("--data", default="world",
                   help="'world' (fresh renders, parsed by the scene judge at 64x64) or a folder of PNG/JPEG "
                        "files (each resized and center-cropped to the codec's size)")
    p.add_argument("--n", type=int, default=500, help="number of images")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")


def _scene_parser():
    """The world's scene judge: image (64, 64, 3) uint8 -> Scene, or None if not available."""
    try:
        from omniloom.world.parse_image import parse_image
    except ImportError:
        return None
    return parse_image


def world_scenes(b: int, rng: np.random.Generator, resolution: int) -> tuple[list, torch.Tensor]:
    """``b`` fresh scenes and their renders (B, 3, R, R) in [0, 1], resized from 64x64 when R differs."""
    from omniloom.world.render import render_scene
    from omniloom.world.scene import sample_scene

    scenes = [sample_scene(rng, compositional=bool(rng.random() < 0.3)) for _ in range(b)]
    renders = [render_scene(s, rng) for s in scenes]  # (64, 64, 3) uint8
    if resolution == 64:
        return scenes, torch.from_numpy(np.stack([r.transpose(2, 0, 1) for r in renders]) / 255.0).float()
    return scenes, torch.from_numpy(np.stack([resize_crop(r, resolution) for r in renders]))


@torch.no_grad()
def evaluate(codec: Any, data: str = "world", n: int = 500, batch: int = 50, seed: int = 1234) -> dict:
    """PSNR, SSIM, code usage/perplexity, bits/image, encode/decode speed and (world, 64x64) scene accuracy.

    Any image codec works (shipped, a folder, ``hf:DIR``): world renders are resized to its size; a
    codec that cannot decode (``can_decode`` False) gets its codes and encode speed only.
    """
    if n < 1 or batch < 1:
        raise ValueError(f"--n and --batch must be positive, got {n} and {batch}")
    res_px = int(codec.resolution)
    decodes = bool(getattr(codec, "can_decode", True))
    rng = np.random.default_rng(seed)
    parse = _scene_parser() if data == "world" and res_px == 64 and decodes else None
    files = None if data == "world" else list_image_files(data)
    ps, ss, all_codes = [], [], []
    t_enc = t_dec = 0.0
    exact = judged = parsed_clean = 0
    done = 0
    while done < n:
        b = min(batch, n - done)
        scenes = None
        if data == "world":
            scenes, x = world_scenes(b, rng, res_px)
        else:
            x = torch.from_numpy(np.stack([load_image(f, res_px) for f in files[done:done + b]]))
        t = time.perf_counter()
        codes = codec.encode(x)
        t_enc += time.perf_counter() - t
        all_codes.append(codes)
        if decodes:
            t = time.perf_counter()
            y = codec.decode(codes)
            t_dec += time.perf_counter() - t
            ps.append(psnr(y, x))
            ss.append(ssim(y, x))
        if parse is not None and scenes is not None:
            imgs = (y.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            clean = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            for s, im, cl in zip(scenes, imgs, clean):
                exact += int(parse(im) == s)
                parsed_clean += int(parse(cl) == s)
                judged += 1
        done += b
        if files is not None and done >= len(files):
            break
    cat = torch.cat(all_codes)
    res = {
        "images": int(cat.shape[0]),
        "resolution": res_px,
        "psnr_db": float(torch.cat(ps).mean()) if decodes else None,
        "ssim": float(torch.cat(ss).mean()) if decodes else None,
        **code_stats(cat, codec.codebook_size),
        "codebook_size": codec.codebook_size,
        "tokens_per_image": codec.tokens_per_item,
        "bits_per_image": codec.tokens_per_item * math.log2(codec.codebook_size),
        "encode_images_per_s": cat.shape[0] / max(t_enc, 1e-9),
        "decode_images_per_s": cat.shape[0] / max(t_dec, 1e-9) if decodes else None,
        "threads": torch.get_num_threads(),
    }
    if judged:
        res["scene_exact_reconstructed"] = exact / judged
        res["scene_exact_original"] = parsed_clean / judged
    return res


def format_table(res: dict) -> str:
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else "n/a" if v is None else str(v)) for k, v in res.items()]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)


def run_eval(args: argparse.Namespace) -> int:
    from omniloom.codecs import load_codec

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.spec and args.codec and args.spec != args.codec:
        raise ValueError(f"two codecs given: {args.spec!r} and --codec {args.codec!r}; give one")
    spec = args.spec or args.codec or "image-world"
    codec = load_codec(spec)
    if codec.modality != "image":
        raise ValueError(f"codec {spec!r} is a {codec.modality} codec, not an image codec")
    res = {"codec": str(spec), "data": args.data,
           **evaluate(codec, args.data, n=args.n, batch=args.batch, seed=args.seed)}
    print(format_table(res))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        os.replace(tmp, path)
    return 0


__all__ = [
    "ImageCodecConfig", "add_train_arguments", "run_train", "add_eval_arguments", "run_eval",
    "train", "evaluate", "psnr", "ssim", "code_stats", "list_image_files", "load_image", "world_images",
]
