"""Reconstruction PSNR of a latent autoencoder on an ImageFolder (issue 5 §1).

    nice -n 19 env OMP_NUM_THREADS=1 uv run python tools/vae_psnr.py \
        --vae taesd:../shared/data/taef2-tiny-vae-weights \
        --data-dir ../shared/data/imagenet-sample-500/val --image-size 256 --output vae_psnr.json

Every image is centre-cropped (ADM's ``center_crop_arr``), encoded to the posterior mean,
decoded and clamped to ``[0, 1]``; PSNR = ``10 log10(1 / MSE)`` over all pixels and channels of
the ``[0, 1]`` image. Reports the mean of per-image PSNRs and the PSNR of the mean MSE.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vae", required=True, help="diffusers:PATH | kl16:PATH | taesd:DIR")
    ap.add_argument("--data-dir", required=True, help="ImageFolder root (root/<class>/<image>)")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--output", default=None, help="JSON file for the results")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from djepa.image.datasets import ImageFolderDataset
    from djepa.image.vae import load_vae

    torch.set_grad_enabled(False)
    tok = load_vae(args.vae, args.image_size)
    ds = ImageFolderDataset(args.data_dir, args.image_size, hflip=False)
    n = len(ds) if args.max_images is None else min(len(ds), args.max_images)
    psnrs, mses = [], []
    t0 = time.perf_counter()
    for start in tqdm(range(0, n, args.batch_size), desc="vae-psnr", unit="batch"):
        x = torch.stack([ds[i][0] for i in range(start, min(n, start + args.batch_size))])
        y = tok.decode_latents(tok.encode_moments(x)[0])
        mse = ((y - x) ** 2).flatten(1).mean(1).double()
        mses += mse.tolist()
        psnrs += (10 * torch.log10(1.0 / mse)).tolist()
    seconds = time.perf_counter() - t0
    res = dict(vae=tok.spec, data_dir=args.data_dir, image_size=args.image_size, images=n,
               psnr_mean_db=sum(psnrs) / n, psnr_of_mean_mse_db=10 * math.log10(1.0 / (sum(mses) / n)),
               psnr_min_db=min(psnrs), psnr_max_db=max(psnrs),
               psnr_median_db=sorted(psnrs)[n // 2], seconds=round(seconds, 1))
    print(json.dumps(res, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    return res


if __name__ == "__main__":
    main()
