"""Fewest denoising steps that keep sample quality within the issue's margin of the S = 100
DDPM result (issue "Benchmarks", fast paths).

Samples ``--num-per-class`` images per class from a trained run for each number of denoising
steps S (respaced DDPM for diffusion models; Euler and Heun for flow models), scores them with
the reference classifier fitted on real images only, and prints accuracy and seconds/image.
Every batch has its own generator seeded from (``--seed``, batch index), so for every S a batch
gets the same AR orders and the same initial noise of its first AR step; later draws differ
with S (the denoising loop consumes noise per step).

``--dataset fashion-mnist`` also reports FID (TF-2015 Inception pool_3) of the samples against
the real test split; its features are computed once and cached in ``--real-features`` (the
ablation's ``real_test.npz`` can be reused).

    uv run python tools/experiments/fewest_steps.py --checkpoint runs/digits --steps 100,50,25,15,10
    uv run python tools/experiments/fewest_steps.py --checkpoint runs/jepa_ablation/djepa \\
        --dataset fashion-mnist --num-per-class 200 --steps 100,25,10 \\
        --real-features runs/jepa_ablation/real_test.npz --ar-steps 16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def real_features(path: Path, data_dir: str, extractor) -> np.ndarray:
    from djepa.image.datasets import IDXDataset
    from djepa.image.metrics import extract_features

    if path.is_file():
        pool = np.load(path)["pool"]
        if len(pool) == 10000:
            return pool
        print(f"{path} holds {len(pool)} images, not the 10k test split: recomputing")
    ds = IDXDataset(data_dir, split="test")
    imgs = ds.data.unsqueeze(1).expand(-1, 3, -1, -1)
    feats = extract_features(extractor, (imgs[i:i + 100] for i in range(0, len(imgs), 100)),
                             progress=True, total=len(imgs))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, pool=feats.pool)
    tmp.replace(path)
    return feats.pool


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", choices=["digits", "fashion-mnist"], default="digits")
    ap.add_argument("--data-dir", default=str(SHARED / "fashion-mnist"))
    ap.add_argument("--real-features", type=Path, default=Path("runs/fashion-mnist-test-inception.npz"),
                    help="fashion-mnist: .npz cache of the real test split's Inception features")
    ap.add_argument("--steps", default="100,50,25,15,10")
    ap.add_argument("--num-per-class", type=int, default=20)
    ap.add_argument("--ar-steps", type=int, default=None)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--solvers", default="euler,heun", help="flow models only")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true",
                    help="compile the backbone for sampling (djepa.core.cpu_speed.compile), as image-sample --compile")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from djepa.core.cpu_speed import SpeedSettings, install

    install(SpeedSettings.on())  # the CPU speed paths the CLIs run (--cpu-speed on)

    from djepa.core.config import SamplerConfig
    from djepa.core.sampler import generate
    from djepa.image.classifier import class_accuracy, fit_reference_classifier
    from djepa.image.grid import to_uint8
    from djepa.image.sample import load_generator

    model, tokenizer, _ = load_generator(args.checkpoint)
    if args.compile:
        from djepa.core.cpu_speed.compile import compile_backbone_for_sampling

        compile_backbone_for_sampling(model)
    clf = fit_reference_classifier(args.dataset, args.data_dir if args.dataset != "digits" else None)
    print(f"reference classifier: {100 * clf.heldout_accuracy:.1f} % on held-out real images", flush=True)
    extractor = real = None
    if args.dataset == "fashion-mnist":
        from djepa.image.metrics import build_extractor

        extractor = build_extractor(None)
        real = real_features(args.real_features, args.data_dir, extractor)
    labels = torch.arange(model.config.num_classes).repeat(args.num_per_class)  # i mod classes
    solvers = args.solvers.split(",") if model.config.loss.kind == "flow" else ["ddpm"]
    if args.compile:  # compile outside the timings: a 2-image run through every AR step's shapes
        t0 = time.perf_counter()
        warm = SamplerConfig(num_ar_steps=args.ar_steps or min(model.config.seq_len, 64),
                             cfg_scale=args.cfg, num_denoise_steps=2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            generate(model, labels[:2], warm, generator=torch.Generator().manual_seed(0))
        print(f"compiled the backbone in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for solver in solvers:
        for s in (int(x) for x in args.steps.split(",")):
            cfg = SamplerConfig(num_ar_steps=args.ar_steps or min(model.config.seq_len, 64),
                                cfg_scale=args.cfg, temperature=args.temperature, num_denoise_steps=s,
                                flow_solver=solver if solver != "ddpm" else "euler")
            t0 = time.perf_counter()
            chunks = []
            for b in range(0, len(labels), args.batch_size):
                gen = torch.Generator().manual_seed(args.seed * 1_000_003 + b)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    tokens = generate(model, labels[b:b + args.batch_size], cfg, generator=gen,
                                      clip_range=tokenizer.value_range)
                chunks.append(tokenizer.decode(tokens.float()))
            sec = (time.perf_counter() - t0) / len(labels)
            images = torch.cat(chunks)
            row = dict(solver=solver, steps=s, accuracy=class_accuracy(clf, images, labels),
                       seconds_per_image=sec)
            if extractor is not None:
                from djepa.image.metrics import extract_features, frechet_distance_from_features

                u8 = torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
                feats = extract_features(extractor, (u8[i:i + 100] for i in range(0, len(u8), 100)))
                row["fid"] = frechet_distance_from_features(feats.pool, real)
            rows.append(row)
            fid = f"  FID-{len(labels)} {row['fid']:7.2f}" if "fid" in row else ""
            print(f"{solver:5s} S={s:3d}  class accuracy {100 * row['accuracy']:5.1f} %{fid}  "
                  f"{sec * 1000:7.1f} ms/img", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(checkpoint=args.checkpoint, dataset=args.dataset, cfg=args.cfg,
                           temperature=args.temperature, num_images=len(labels),
                           ar_steps=args.ar_steps or min(model.config.seq_len, 64),
                           compiled_backbone=args.compile,
                           heldout_real_accuracy=clf.heldout_accuracy, rows=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
