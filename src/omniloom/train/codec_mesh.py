"""Train and evaluate the FSQ mesh (3D occupancy) codec (``omniloom codec train|eval mesh``).

Data: fresh 16^3 occupancy grids drawn on the fly, ``--scene-share`` of them voxelized 3D world
scenes (``omniloom.world.scene3d``) and the rest one or two free primitives (cube, sphere, cone,
cylinder) of jittered size (3-9 voxels) and position, on the ground or floating, so the codec
does not only know the world's 3x3 layout.
Training: binary cross-entropy on occupancy logits plus a soft-IoU term, AdamW with warmup and
cosine decay, atomic resumable checkpoints (``<out>/ckpt.pt``), a loss curve (``<out>/loss.png``)
and the codec (``config.json`` + ``model.safetensors``) in ``<out>``.
Evaluation: voxel IoU of decode(encode(x)) on held-out world scenes, the share of scenes the
scene reader (``scene3d.parse_voxels``) still reads exactly, code usage and bits per shape.

  omniloom codec train mesh --out runs/codec-mesh --steps 1000 --threads 1
  omniloom codec eval mesh mesh-world --n 500 --json mesh-eval.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from omniloom.codecs.mesh import MeshCodec, MeshCodecConfig
from omniloom.world.scene3d import SHAPES3D, parse_voxels, primitive_voxels, sample_scene3d, voxelize
from ..utils.fileio import atomic_path, atomic_write_json
from .codec_image import _plot, code_stats, format_table


def random_primitives(rng: np.random.Generator, grid: int = 16) -> np.ndarray:
    """One or two free solids of jittered size and place (on the ground 60% of the time)."""
    out = np.zeros((grid, grid, grid), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        size = float(rng.uniform(3, 9))
        cx, cy = rng.uniform(size / 2, grid - size / 2, 2)
        z0 = 0.0 if rng.random() < 0.6 else float(rng.uniform(0, grid - size))
        out |= primitive_voxels(SHAPES3D[int(rng.integers(len(SHAPES3D)))], cx, cy, z0, size, grid)
    return out


def mesh_batch(n: int, rng: np.random.Generator, scene_share: float = 0.6) -> np.ndarray:
    """``n`` fresh occupancy grids -> (n, 16, 16, 16) float32 in {0, 1}."""
    vox = [voxelize(sample_scene3d(rng)) if rng.random() < scene_share else random_primitives(rng) for _ in range(n)]
    return np.stack(vox).astype(np.float32)


def recon_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """BCE on occupancy logits + (1 - soft IoU) per shape (keeps thin parts: apexes, small tops)."""
    bce = F.binary_cross_entropy_with_logits(logits, x)
    p = torch.sigmoid(logits).flatten(1)
    t = x.flatten(1)
    inter = (p * t).sum(1)
    soft_iou = inter / (p.sum(1) + t.sum(1) - inter).clamp_min(1e-6)
    return bce + (1 - soft_iou).mean()


def batch_iou(pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-shape voxel IoU of bool predictions against {0, 1} targets: (B, g, g, g) x2 -> (B,)."""
    p, t = pred.flatten(1).bool(), x.flatten(1) > 0.5
    union = (p | t).sum(1).clamp_min(1)
    return (p & t).sum(1) / union


# ---- training --------------------------------------------------------------------------------


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (checkpoint, loss.png, the codec)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--scene-share", type=float, default=0.6, help="share of world scenes (the rest: free primitives)")
    p.add_argument("--channels", default="16,32,64", help="encoder/decoder widths at 16^3, 8^3, 4^3")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--fp16", action="store_true", help="write the final weights in float16 (shipped codecs)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def train(args: argparse.Namespace) -> dict:
    """Train (or resume) a mesh codec; returns metrics on a held-out batch of world scenes."""
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.batch < 1:
        raise ValueError(f"--steps and --batch must be positive, got {args.steps} and {args.batch}")
    if not 0 <= args.scene_share <= 1:
        raise ValueError(f"--scene-share must be in [0, 1], got {args.scene_share}")
    try:
        channels = [int(c) for c in args.channels.split(",")]
    except ValueError:
        raise ValueError(f"--channels takes three comma-separated widths, got {args.channels!r}") from None
    codec = MeshCodec(MeshCodecConfig(channels=channels)).to(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"
    torch.manual_seed(args.seed)
    opt = torch.optim.AdamW(codec.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    step, losses = 0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=args.device, weights_only=True)
        if state["config"] != codec.config_dict():
            raise ValueError(f"{ckpt_path} was written for another codec config; use a new --out")
        codec.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, losses = int(state["step"]), list(state["losses"])
        print(f"resuming from {ckpt_path} at step {step}")

    def lr_at(s: int) -> float:
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        t = (s - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    rng = np.random.default_rng([args.seed, step])  # a resumed run draws fresh data
    val_rng = np.random.default_rng(10**6 + args.seed)
    val = torch.from_numpy(np.stack([voxelize(sample_scene3d(val_rng)) for _ in range(128)]).astype(np.float32))
    codec.train()
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, desc="mesh codec", dynamic_ncols=True)
    t0 = time.time()
    while step < args.steps:
        x = torch.from_numpy(mesh_batch(args.batch, rng, args.scene_share)).to(args.device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits, _ = codec(x)
        loss = recon_loss(logits, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if step % args.ckpt_every == 0 or step == args.steps:
            m = evaluate_batch(codec, val.to(args.device))
            bar.write(f"step {step} loss {np.mean(losses[-50:]):.4f} val iou {m['iou']:.4f} "
                      f"codes used {m['codes_used']:.3f} ({time.time() - t0:.0f}s)")
            with atomic_path(ckpt_path) as tmp:
                torch.save({"model": codec.state_dict(), "opt": opt.state_dict(), "step": step,
                            "losses": losses, "config": codec.config_dict()}, tmp)
            _plot(losses, out / "loss.png")
            codec.save(out)
            codec.train()
    bar.close()
    codec.eval()
    metrics = evaluate_batch(codec, val.to(args.device))
    codec.save(out, dtype=torch.float16 if args.fp16 else None)
    return metrics


@torch.no_grad()
def evaluate_batch(codec: MeshCodec, x: torch.Tensor) -> dict[str, float]:
    codec.eval()
    codes = codec.encode(x)
    return {"iou": float(batch_iou(codec.decode(codes), x.cpu()).mean()), **code_stats(codes, codec.codebook_size)}


def run_train(args: argparse.Namespace) -> int:
    m = train(args)
    print(json.dumps({k: round(v, 4) for k, v in m.items()}))
    print(f"codec written to {args.out}")
    return 0


# ---- evaluation ------------------------------------------------------------------------------


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", default=None, metavar="SPEC",
                   help="codec: a shipped name (mesh-world) or a codec folder (default mesh-world)")
    p.add_argument("--codec", default=None, help="the codec spec, as a flag (same as SPEC)")
    p.add_argument("--n", type=int, default=500, help="number of held-out world scenes")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")


@torch.no_grad()
def evaluate(codec: MeshCodec, n: int = 500, seed: int = 1234) -> dict:
    """Voxel IoU, share of scenes read back exactly, code usage and bits per shape on ``n`` fresh
    world scenes (the rng of ``seed`` is not one training draws from: training seeds its data with
    ``[seed, step]``, this with a single integer)."""
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    scenes = [sample_scene3d(rng) for _ in range(n)]
    x = torch.from_numpy(np.stack([voxelize(s) for s in scenes]).astype(np.float32))
    t = time.perf_counter()
    codes = codec.encode(x)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    y = codec.decode(codes)
    t_dec = time.perf_counter() - t
    iou = batch_iou(y, x)
    exact = sum(parse_voxels(v.numpy()) == s for v, s in zip(y, scenes))
    return {
        "shapes": n,
        "iou_mean": float(iou.mean()),
        "iou_min": float(iou.min()),
        "share_iou_ge_0.9": float((iou >= 0.9).float().mean()),
        "scene_exact_reconstructed": exact / n,
        **code_stats(codes, codec.codebook_size),
        "codebook_size": codec.codebook_size,
        "tokens_per_shape": codec.tokens,
        "bits_per_shape": codec.bits_per_shape,
        "encode_shapes_per_s": n / max(t_enc, 1e-9),
        "decode_shapes_per_s": n / max(t_dec, 1e-9),
        "threads": torch.get_num_threads(),
    }


def run_eval(args: argparse.Namespace) -> int:
    from omniloom.codecs import load_codec

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.spec and args.codec and args.spec != args.codec:
        raise ValueError(f"two codecs given: {args.spec!r} and --codec {args.codec!r}; give one")
    spec = args.spec or args.codec or "mesh-world"
    codec = load_codec(spec)
    if codec.modality != "mesh":
        raise ValueError(f"codec {spec!r} is a {codec.modality} codec, not a mesh codec")
    res = {"codec": str(spec), **evaluate(codec, n=args.n, seed=args.seed)}
    print(format_table(res))
    if args.json:
        atomic_write_json(args.json, res)
    return 0
