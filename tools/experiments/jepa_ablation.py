"""The JEPA-loss ablation of paper Table 6 at CPU scale: D-JEPA vs. the MAR baseline.

Both models are trained on the Fashion-MNIST train split with ``image-train`` and identical flags
(same seed, so the same initialisation of the shared weights, data order and masks) except
``--prediction-loss-weight`` (1 = D-JEPA, 0 = MAR: no prediction loss, no target-encoder pass).
Each kept checkpoint's EMA weights are then sampled with the same sampler settings and seed and
scored with

- FID (TF-2015 Inception pool_3, :mod:`djepa.image.metrics`) of ``--curve-samples``
  class-balanced samples against the 10k real test images, at every evaluated checkpoint (the
  curve); by default without classifier-free guidance (Table 6 reports "FID (w/o cfg)") at
  τ = 0.94, the paper's temperature without guidance (§3.5);
- FID of ``--final-samples`` samples against the 10k test images at the last checkpoint (the
  headline number; the curve's point there uses the first ``--curve-samples`` of them);
- the class-accuracy check (PCA-50 + SVC fitted on real Fashion-MNIST train images only).

Every phase is resumable: finished trainings, sample sets and feature files are reused, so the
same command continues after an interruption; a run folder trained with other flags is refused.
Everything that depends on the sampler settings lives in ``OUT/eval_<settings>/`` (samples,
features, ``results.json``), so other settings never reuse it; ``--report``
writes the markdown table and ``--plot`` the FID-vs-steps PNG.

    uv run python tools/experiments/jepa_ablation.py --output-dir runs/jepa_ablation \\
        --report docs/results/jepa_ablation.md --plot docs/results/jepa_ablation_fid.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

VARIANTS = {"djepa": 1.0, "mar": 0.0}  # name → prediction-loss weight
LABEL = {"djepa": "D-JEPA (diffusion + prediction loss)", "mar": "MAR baseline (prediction-loss weight 0)"}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _atomic_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def sampler_tag(args) -> str:
    """Names the evaluation folder after every setting that changes the samples, so results
    of other sampler settings are never mixed up or reused."""
    return (f"eval_K{args.ar_steps}_S{args.denoise_steps}_cfg{args.cfg:g}_tau{args.temperature:g}"
            f"_seed{args.seed}_b{args.sample_batch}")


def _eval_steps(spec: str, max_steps: int) -> list[int]:
    steps = sorted({int(s) for s in spec.split(",") if s.strip()})
    if not steps or steps[0] < 1 or steps[-1] != max_steps:
        raise SystemExit(f"--eval-steps must be positive and end at --steps {max_steps}, got {spec!r}")
    return steps


def train_flags(args, weight: float, out: Path, every: int) -> list[str]:
    """The ``image-train`` command line of one variant (identical except the weight)."""
    return ["--dataset", "idx", "--data-dir", args.data_dir, "--patch-size", str(args.patch_size),
            "--preset", args.preset, "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
            "--checkpoint-every", str(every), "--keep-last", "1000", "--sample-every", "0",
            "--log-every", "100", "--seed", str(args.seed), "--prediction-loss-weight", str(weight),
            "--output-dir", str(out)]


def train_variant(args, name: str, out: Path, every: int) -> dict:
    """Run (or resume, or skip when finished) ``image-train`` for one variant in a subprocess."""
    done = out / "train_done.json"
    cmd = [sys.executable, "-m", "djepa.image.train", *train_flags(args, VARIANTS[name], out, every)]
    command = "image-train " + " ".join(cmd[3:])
    if done.is_file():
        info = json.loads(done.read_text())
        if info["command"] != command:
            raise SystemExit(f"{out} was trained with other flags:\n  {info['command']}\nnot\n  {command}\n"
                             f"use another --output-dir (or the original training flags)")
        return info
    out.mkdir(parents=True, exist_ok=True)
    _log(f"train {name}: {' '.join(cmd[1:])}")
    t0 = time.perf_counter()
    with open(out / "train.log", "a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"image-train for {name} failed (exit {rc}); see {out / 'train.log'}")
    info = dict(seconds=time.perf_counter() - t0, command=command)
    _atomic_json(done, info)
    return info


def train_all(args, root: Path, every: int) -> dict:
    """Train both variants, concurrently when ``--parallel`` (one thread each)."""
    if not args.parallel:
        return {n: train_variant(args, n, root / n, every) for n in VARIANTS}
    procs = {}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for n in VARIANTS:
        if (root / n / "train_done.json").is_file():
            continue
        cmd = [sys.executable, __file__, "--_train-one", n, *sys.argv[1:]]
        procs[n] = subprocess.Popen(cmd, env=env)
    bad = [n for n, p in procs.items() if p.wait() != 0]
    if bad:
        raise SystemExit(f"training failed for {bad}")
    return {n: json.loads((root / n / "train_done.json").read_text()) for n in VARIANTS}


def real_features(args, root: Path, extractor):
    """Inception features of the 10k Fashion-MNIST test images (cached in ``OUT/real_test.npz``)."""
    from djepa.image.datasets import IDXDataset
    from djepa.image.metrics import extract_features

    path = root / "real_test.npz"
    if path.is_file():
        pool = np.load(path)["pool"]
        if len(pool) == min(args.real_images, 10000):
            return pool
    ds = IDXDataset(args.data_dir, split="test")
    imgs = ds.data[:args.real_images].unsqueeze(1).expand(-1, 3, -1, -1)  # raw uint8, gray → RGB as PIL does
    _log(f"real: Inception features of {len(imgs)} test images")
    feats = extract_features(extractor, (imgs[i:i + 100] for i in range(0, len(imgs), 100)),
                             progress=True, total=len(imgs))
    _atomic_npz(path, pool=feats.pool)
    return feats.pool


def sample_checkpoint(args, ckpt_dir: Path, n: int, dest: Path) -> dict:
    """``n`` samples (labels ``i mod 10``) as uint8 ``[n, 28, 28]`` in ``dest`` (reused if there)."""
    from djepa.core.config import SamplerConfig
    from djepa.core.sampler import generate
    from djepa.image.grid import to_uint8
    from djepa.image.sample import load_generator

    if dest.is_file():
        z = np.load(dest)
        if len(z["images"]) >= n:
            return dict(images=z["images"][:n], labels=z["labels"][:n],
                        seconds_per_image=float(z["seconds_per_image"]))
    model, tokenizer, _ = load_generator(ckpt_dir)
    cfg = SamplerConfig(num_ar_steps=args.ar_steps, cfg_scale=args.cfg, temperature=args.temperature,
                        num_denoise_steps=args.denoise_steps)
    labels = torch.arange(n) % model.config.num_classes
    gen = torch.Generator().manual_seed(args.seed)
    out = []
    t0 = time.perf_counter()
    for s in range(0, n, args.sample_batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tok = generate(model, labels[s:s + args.sample_batch], cfg, generator=gen,
                           clip_range=tokenizer.value_range)
        out.append(to_uint8(tokenizer.decode(tok.float()))[..., 0])
    spi = (time.perf_counter() - t0) / n
    images = np.concatenate(out)
    _atomic_npz(dest, images=images, labels=labels.numpy(), seconds_per_image=spi)
    return dict(images=images, labels=labels.numpy(), seconds_per_image=spi)


def features_of(extractor, images: np.ndarray, dest: Path) -> np.ndarray:
    from djepa.image.metrics import extract_features

    if dest.is_file():
        f = np.load(dest)["pool"]
        if len(f) >= len(images):
            return f[:len(images)]
    x = torch.from_numpy(images).unsqueeze(1).expand(-1, 3, -1, -1)
    feats = extract_features(extractor, (x[i:i + 100] for i in range(0, len(x), 100)),
                             progress=True, total=len(x))
    _atomic_npz(dest, pool=feats.pool)
    return feats.pool


def evaluate(args, root: Path, steps: list[int], train_info: dict) -> dict:
    from djepa.core.train.checkpoint import tag_for_step
    from djepa.image.classifier import class_accuracy, fit_reference_classifier
    from djepa.image.metrics import build_extractor, frechet_distance_from_features

    extractor = build_extractor(None)
    real = real_features(args, root, extractor)
    _log("fitting the reference classifier (PCA-50 + SVC on real train images)")
    clf = fit_reference_classifier("fashion-mnist", args.data_dir)
    _log(f"reference classifier: {100 * clf.heldout_accuracy:.1f} % on the real test split")
    ev = root / sampler_tag(args)  # everything that depends on the sampler settings
    ev.mkdir(exist_ok=True)
    results_path = ev / "results.json"
    rows = json.loads(results_path.read_text())["rows"] if results_path.is_file() else []
    have = {(r["variant"], r["step"]) for r in rows}
    for step in steps:
        for name in VARIANTS:
            if (name, step) in have:
                continue
            n = args.final_samples if step == steps[-1] else args.curve_samples
            ckpt = root / name / "checkpoints" / tag_for_step(step)
            _log(f"{name} step {step}: sampling {n} images")
            smp = sample_checkpoint(args, ckpt, n, ev / f"{name}_samples_{step}.npz")
            _log(f"{name} step {step}: {smp['seconds_per_image'] * 1000:.1f} ms/img; Inception features")
            feats = features_of(extractor, smp["images"], ev / f"{name}_features_{step}.npz")
            imgs = torch.from_numpy(smp["images"]).float().div(255).unsqueeze(1)
            labels = torch.from_numpy(smp["labels"])
            k = args.curve_samples
            row = dict(variant=name, step=step, samples=n,
                       fid_curve=frechet_distance_from_features(feats[:k], real),
                       fid_final=frechet_distance_from_features(feats, real) if n == args.final_samples else None,
                       class_accuracy_curve=class_accuracy(clf, imgs[:k], labels[:k]),
                       class_accuracy_all=class_accuracy(clf, imgs, labels),
                       sample_seconds_per_image=smp["seconds_per_image"])
            _log(f"{name} step {step}: FID-{k} {row['fid_curve']:.2f}"
                 + (f", FID-{n} {row['fid_final']:.2f}" if row["fid_final"] is not None else "")
                 + f", class accuracy {100 * row['class_accuracy_all']:.1f} % ({n} images)")
            rows.append(row)
            save_results(args, ev, rows, train_info, clf.heldout_accuracy, real_n=len(real))
    return json.loads(results_path.read_text())


def save_results(args, root, rows, train_info, clf_acc, real_n) -> None:
    res = dict(
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")},
        train=train_info, reference_classifier_heldout_accuracy=clf_acc, real_images=real_n,
        machine=dict(platform=platform.platform(), processor=platform.processor(),
                     cpus=os.cpu_count(), torch=torch.__version__),
        rows=sorted(rows, key=lambda r: (r["step"], r["variant"])))
    _atomic_json(root / "results.json", res)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = res["args"]["curve_samples"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for name, style in (("djepa", "o-"), ("mar", "s--")):
        pts = [(r["step"], r["fid_curve"]) for r in res["rows"] if r["variant"] == name]
        if pts:
            ax.plot(*zip(*pts), style, label=LABEL[name])
    ax.set_xlabel("training step (batch %d)" % res["args"]["batch_size"])
    ax.set_ylabel(f"FID ({n} samples vs 10k real test)")
    ax.set_title("Fashion-MNIST: JEPA prediction loss ablation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _flags(a: dict) -> str:
    parts = []
    for k, v in a.items():
        if v is None or v is False or k == "phase":
            continue
        flag = "--" + k.replace("_", "-")
        parts.append(flag if v is True else f"{flag} {v}")
    return " ".join(parts)


def report(res: dict, path: Path, plot_path: Path | None) -> None:
    a = res["args"]
    k, n = a["curve_samples"], a["final_samples"]
    lines = [f"| step | model | FID-{k} | FID-{n} | class accuracy ({k}) | class accuracy (all) | sampling ms/img |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        final = f"{r['fid_final']:.2f}" if r["fid_final"] is not None else "–"
        lines.append(f"| {r['step']} | {r['variant']} | {r['fid_curve']:.2f} | {final} | "
                     f"{100 * r['class_accuracy_curve']:.1f} % | {100 * r['class_accuracy_all']:.1f} % "
                     f"({r['samples']}) | {1000 * r['sample_seconds_per_image']:.1f} |")
    m = res["machine"]
    train = "\n".join(f"- {v}: {t['seconds'] / 60:.1f} min — `{t['command']}`" for v, t in res["train"].items())
    body = f"""<!-- generated by tools/experiments/jepa_ablation.py; commentary below the marker is hand-written -->
# JEPA-loss ablation (paper Table 6) on Fashion-MNIST

Two models trained with identical flags except the prediction-loss weight
(1 = D-JEPA, 0 = MAR baseline); same seed, data order, masks and budget ({a['steps']} steps of batch
{a['batch_size']}). Samples: {a['ar_steps']} AR steps, {a['denoise_steps']} respaced DDPM steps,
cfg {a['cfg']}{' (off: Table 6 reports FID without guidance)' if a['cfg'] == 1.0 else ' (linear schedule)'}, temperature {a['temperature']}, seed {a['seed']}, labels `i mod 10`
(the first {k} samples are class-balanced and are the FID-{k} set at every step). One training
seed per model and one sampling seed: differences of a few FID points are within run-to-run noise.
FID: TF-2015 Inception pool_3 against the {res['real_images']} real test images. Class accuracy: PCA-50 +
SVC fitted on real train images only ({100 * res['reference_classifier_heldout_accuracy']:.1f} % on the
real test images).

{chr(10).join(lines)}

{f'![FID against training steps]({plot_path.name})' if plot_path else ''}

Training wall time ({m['cpus']} CPU cores, {m['processor'] or m['platform']}{', both runs at once, one thread each' if a['parallel'] else ''}):
{train}

Reproduce:

```
uv run python tools/experiments/jepa_ablation.py \\
    {_flags(a)}
```

<!-- end of generated part -->
"""
    old = path.read_text() if path.is_file() else ""
    tail = old.split("<!-- end of generated part -->", 1)[1] if "<!-- end of generated part -->" in old else ""
    path.write_text(body + tail)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2].parent / "shared/data/fashion-mnist"))
    ap.add_argument("--output-dir", default="runs/jepa_ablation")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-steps", default="500,1000,1500")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--curve-samples", type=int, default=2000)
    ap.add_argument("--final-samples", type=int, default=10000)
    ap.add_argument("--ar-steps", type=int, default=16)
    ap.add_argument("--denoise-steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=1.0, help="1 = no guidance, as Table 6")
    ap.add_argument("--temperature", type=float, default=0.94, help="paper §3.5: 0.94 without cfg")
    ap.add_argument("--real-images", type=int, default=10000, help="real test images for FID (smoke runs: fewer)")
    ap.add_argument("--sample-batch", type=int, default=500)
    ap.add_argument("--parallel", action="store_true", help="train both variants at once (1 thread each)")
    ap.add_argument("--phase", choices=["train", "all"], default="all")
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--_train-one", dest="_train_one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from djepa.core.cpu_speed import SpeedSettings, install

    install(SpeedSettings.on())  # the CPU speed paths the CLIs run (--cpu-speed on)

    root = Path(args.output_dir)
    steps = _eval_steps(args.eval_steps, args.steps)
    every = math.gcd(*steps)
    if args._train_one:
        train_variant(args, args._train_one, root / args._train_one, every)
        return 0
    root.mkdir(parents=True, exist_ok=True)
    train_info = train_all(args, root, every)
    if args.phase == "train":
        return 0
    res = evaluate(args, root, steps, train_info)
    print(f"results: {root / sampler_tag(args) / 'results.json'}")
    if args.plot:
        plot(res, args.plot)
    if args.report:
        report(res, args.report, args.plot)
    for r in res["rows"]:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
