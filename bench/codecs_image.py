"""Image codecs side by side: the bundled image-world codec and transformers' VQ-VAEs (hf:DIR).

Two tables:

1. **Speed and size.** image-world against the Chameleon, Emu3 and Janus VQ-VAEs at their real
   configurations (Chameleon 512 px, Emu3 512 px, Janus-Pro 384 px) with *random* weights, each
   saved with ``save_pretrained`` and loaded through ``load_codec("hf:DIR")``: image size, codes per
   image, codebook, bits per image (codes x log2 codebook), parameters, and encode / decode images
   per second at batch 1 (one image per request, as a server sees them) on a real photo. The
   transformers codecs are timed at ``--hf-size`` (256 px by default, through ``?size=``: their
   convolutions cost in proportion to the pixels, and Emu3 at 512 px takes minutes per image on 2
   CPU cores); ``--hf-size 0`` times them at their own size. Random weights say nothing about
   quality, so no PSNR is given for them.
2. **Where image-world stops.** Its reconstruction PSNR on real photos (scikit-image's data,
   center-cropped and resized to 64x64) against its PSNR on held-out shapes-world renders, each
   beside a trivial peer: an 8x8 thumbnail (area average) upsampled bicubically, 1536 bits.

    python bench/codecs_image.py                    # both tables (a few minutes on 2 CPU cores)
    python bench/codecs_image.py --skip-hf          # table 2 and image-world's speed only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from omniloom.codecs import load_codec
from omniloom.codecs.image import resize_crop
from omniloom.train.codec_image import psnr, world_scenes

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
# transformers VQ classes at the configurations of the released models (their config defaults, Janus-Pro's grid)
HF_MODELS = {
    "chameleon": ("ChameleonVQVAE", "ChameleonVQVAEConfig", {}),
    "emu3": ("Emu3VQVAE", "Emu3VQVAEConfig", {}),
    "janus": ("JanusVQVAE", "JanusVQVAEConfig", {"num_patches": 24}),
}


def photos() -> dict[str, np.ndarray]:
    """The scikit-image photos that ship with the package (name -> (H, W, 3) uint8)."""
    import skimage.data

    return {name: getattr(skimage.data, name)()[..., :3] for name in PHOTOS}


def speed(codec, image: np.ndarray, n: int) -> dict:
    """Encode / decode images per second at batch 1 over ``n`` runs after one warm-up."""
    x = torch.from_numpy(resize_crop(image, codec.resolution))[None]
    decodes = getattr(codec, "can_decode", True)
    codes = codec.encode(x)
    if decodes:
        codec.decode(codes)
    t = time.perf_counter()
    for _ in range(n):
        codes = codec.encode(x)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(n if decodes else 0):
        codec.decode(codes)
    t_dec = time.perf_counter() - t
    return {"timed_size": codec.resolution, "timed_tokens": codec.tokens_per_item,
            "encode_images_per_s": n / t_enc, "decode_images_per_s": n / t_dec if decodes else None, "runs": n}


def describe(codec) -> dict:
    """A codec's own image size, codes per image, codebook, bits per image and parameters."""
    return {"resolution": codec.resolution, "tokens_per_image": codec.tokens_per_item,
            "codebook_size": codec.codebook_size,
            "bits_per_image": round(codec.tokens_per_item * math.log2(codec.codebook_size), 1),
            "params_m": round(sum(p.numel() for p in codec.parameters()) / 1e6, 1)}


def hf_speed(family: str, image: np.ndarray, n: int, size: int | None) -> dict:
    """Row of one transformers VQ-VAE at random init, loaded through hf:DIR; timed at ``size`` px
    (``?size=``) when given, else at its own size."""
    import transformers

    model_cls, cfg_cls, kw = HF_MODELS[family]
    torch.manual_seed(0)
    vq = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kw))
    with tempfile.TemporaryDirectory() as d:
        vq.save_pretrained(d)
        del vq
        own = describe(load_codec(f"hf:{d}"))
        codec = load_codec(f"hf:{d}?size={size}" if size else f"hf:{d}")
    return {"codec": f"hf:{family} (random init)", **own, **speed(codec, image, n)}


def thumbnail(x: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """The trivial peer: area-average down by ``factor``, bicubic back up, clamped to [0, 1]."""
    small = F.avg_pool2d(x, factor)
    return F.interpolate(small, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0, 1)


@torch.no_grad()
def photos_vs_world(codec, pics: dict[str, np.ndarray], n_world: int, seed: int) -> dict:
    """Per-photo PSNR of decode(encode(x)) and of the thumbnail, and both on held-out world renders."""
    rows = []
    for name, img in pics.items():
        x = torch.from_numpy(resize_crop(img, codec.resolution))[None]
        rows.append({"image": name, "psnr_db": float(psnr(codec.decode(codec.encode(x)), x)[0]),
                     "thumbnail_psnr_db": float(psnr(thumbnail(x), x)[0])})
    rng = np.random.default_rng(seed)
    world, world_thumb = [], []
    for start in range(0, n_world, 50):
        _, x = world_scenes(min(50, n_world - start), rng, codec.resolution)
        world.append(psnr(codec.decode(codec.encode(x)), x))
        world_thumb.append(psnr(thumbnail(x), x))
    return {
        "photos": rows,
        "photos_mean_psnr_db": float(np.mean([r["psnr_db"] for r in rows])),
        "photos_mean_thumbnail_psnr_db": float(np.mean([r["thumbnail_psnr_db"] for r in rows])),
        "world_images": n_world,
        "world_psnr_db": float(torch.cat(world).mean()),
        "world_thumbnail_psnr_db": float(torch.cat(world_thumb).mean()),
    }


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3g}"
    return str(v)


def table(rows: list[dict], cols: list[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default="image-world", help="the bundled-side codec (default image-world)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=20, help="timed runs of the bundled codec")
    p.add_argument("--n-hf", type=int, default=1, help="timed runs of each transformers codec")
    p.add_argument("--hf-size", type=int, default=256,
                   help="image size the transformers codecs are timed at (0: their own, 384-512 px: minutes "
                        "per Emu3 image on 2 CPU cores)")
    p.add_argument("--n-world", type=int, default=200, help="held-out world renders for the PSNR comparison")
    p.add_argument("--seed", type=int, default=1234, help="world seed (the codec trained on seed 0)")
    p.add_argument("--skip-hf", action="store_true", help="leave out the transformers codecs")
    p.add_argument("--json", default="bench_codecs_image.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    pics = photos()
    codec = load_codec(a.codec)
    speed_rows = [{"codec": a.codec, **describe(codec), **speed(codec, pics["astronaut"], a.n)}]
    if not a.skip_hf:
        speed_rows += [hf_speed(f, pics["astronaut"], a.n_hf, a.hf_size or None) for f in HF_MODELS]
    quality = photos_vs_world(codec, pics, a.n_world, a.seed)
    cols = ["codec", "resolution", "tokens_per_image", "codebook_size", "bits_per_image", "params_m",
            "timed_size", "timed_tokens", "encode_images_per_s", "decode_images_per_s"]
    print(table(speed_rows, cols))
    print()
    rows = quality["photos"] + [
        {"image": "photos, mean", "psnr_db": quality["photos_mean_psnr_db"],
         "thumbnail_psnr_db": quality["photos_mean_thumbnail_psnr_db"]},
        {"image": f"world renders, {quality['world_images']} held out", "psnr_db": quality["world_psnr_db"],
         "thumbnail_psnr_db": quality["world_thumbnail_psnr_db"]}]
    print(table(rows, ["image", "psnr_db", "thumbnail_psnr_db"]))
    res = {"speed": speed_rows, "quality": {"codec": a.codec, **quality}, "threads": a.threads,
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    path = Path(a.json)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
