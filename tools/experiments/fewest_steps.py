"""Fewest denoising steps that keep the digits class-accuracy check within 2 points of the
S = 100 DDPM result (issue "Benchmarks", fast paths).

Samples ``--num-per-class`` images per class from a trained digits run for each number of
denoising steps S (respaced DDPM for diffusion models; Euler and Heun for flow models), scores
them with the reference SVC fitted on real digits only, and prints accuracy and seconds/image.

    uv run python tools/experiments/fewest_steps.py --checkpoint runs/digits --steps 100,50,25,15,10
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--steps", default="100,50,25,15,10")
    ap.add_argument("--num-per-class", type=int, default=20)
    ap.add_argument("--ar-steps", type=int, default=None)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--solvers", default="euler,heun", help="flow models only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from djepa.core.config import SamplerConfig
    from djepa.core.sampler import generate
    from djepa.image.classifier import class_accuracy, fit_reference_classifier
    from djepa.image.sample import load_generator

    model, tokenizer, _ = load_generator(args.checkpoint)
    clf = fit_reference_classifier("digits")
    labels = torch.arange(model.config.num_classes).repeat_interleave(args.num_per_class)
    solvers = args.solvers.split(",") if model.config.loss.kind == "flow" else ["ddpm"]
    rows = []
    for solver in solvers:
        for s in (int(x) for x in args.steps.split(",")):
            cfg = SamplerConfig(num_ar_steps=args.ar_steps or min(model.config.seq_len, 64),
                                cfg_scale=args.cfg, temperature=args.temperature, num_denoise_steps=s,
                                flow_solver=solver if solver != "ddpm" else "euler")
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                tokens = generate(model, labels, cfg, generator=torch.Generator().manual_seed(args.seed),
                                  clip_range=tokenizer.value_range)
            sec = (time.perf_counter() - t0) / len(labels)
            acc = class_accuracy(clf, tokenizer.decode(tokens.float()), labels)
            rows.append(dict(solver=solver, steps=s, accuracy=acc, seconds_per_image=sec))
            print(f"{solver:5s} S={s:3d}  class accuracy {100 * acc:5.1f} %  {sec * 1000:7.1f} ms/img", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(checkpoint=args.checkpoint, cfg=args.cfg, temperature=args.temperature,
                           heldout_real_accuracy=clf.heldout_accuracy, rows=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
