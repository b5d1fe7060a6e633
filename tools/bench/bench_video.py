"""Video benchmark (issue 13): training-step and sampling time and peak memory of D-JEPA on the
video token grids, in a plain loop (forward with the EMA target encoder + backward + AdamW), one
configuration per subprocess so that peak memory (ru_maxrss) is that configuration's.

    uv run python tools/bench/bench_video.py            # all rows below, table + JSON
    uv run python tools/bench/bench_video.py --only default

Rows:
* ``default``: the ``video-train`` default (moving digits 12×12, pixel cubes 2×4×4 → 4×3×3 = 36
  tokens of 32 values, preset small with a 256-wide denoising MLP, batch 32); plus sampling 8
  clips with 64 AR steps, 100 Heun steps, cfg 3. ``default-16x16``: the first release's default
  (16×16 frames → 4×4×4 = 64 tokens, the preset's 128-wide MLP).
* ``paper-tiny`` / ``paper-B``: the paper's grid (App. G.3: 160×240×320 → VAE 40×30×40 → patch
  4×2×2 → 10×15×20 = 3000 tokens of 16·4·2·2 = 256 latent values), batch 1, one step (after one
  warm-up step for tiny; B: the first step, as the issue asks for one step) — where attention
  memory grows as N². ``paper-B-ckpt``: the same with activation checkpointing (the paper used
  it for video; ``DJEPAConfig.activation_checkpointing``).

Speed lives here, never in tests. Numbers depend on the machine and its load: the JSON records
the load average and thread count next to every number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROWS = {
    "default": dict(preset="small", grid=(4, 3, 3), token_dim=32, batch=32, steps=5, warmup=2, sample=8, mlp_width=256),
    "default-16x16": dict(preset="small", grid=(4, 4, 4), token_dim=32, batch=32, steps=5, warmup=2, sample=8),
    "paper-tiny": dict(preset="tiny", grid=(10, 15, 20), token_dim=256, batch=1, steps=1, warmup=1, sample=0),
    "paper-B": dict(preset="B", grid=(10, 15, 20), token_dim=256, batch=1, steps=1, warmup=0, sample=0),
    "paper-B-ckpt": dict(preset="B", grid=(10, 15, 20), token_dim=256, batch=1, steps=1, warmup=0, sample=0,
                         activation_checkpointing=True),
}


def _one(name: str) -> dict:
    import torch

    from djepa.core.config import ModelSpec, SamplerConfig
    from djepa.core.ema import EMA
    from djepa.core.model import DJEPA
    from djepa.core.rng import row_generators
    from djepa.core.sampler import generate

    r = ROWS[name]
    torch.manual_seed(0)
    cfg = ModelSpec(preset=r["preset"], loss="flow", pos_embed="rope").build(
        token_dim=r["token_dim"], grid=r["grid"], num_classes=101 if not name.startswith("default") else 20,
        activation_checkpointing=bool(r.get("activation_checkpointing", False)))
    if "mlp_width" in r:  # video-train's SMALL_MLP_WIDTH
        import dataclasses

        cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, mlp_width=r["mlp_width"]))
    model = DJEPA(cfg).train()
    ema = EMA(model, decay=0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n = cfg.seq_len
    x = torch.randn(r["batch"], n, r["token_dim"])
    lab = torch.randint(0, cfg.num_classes, (r["batch"],))
    times = []
    for i in range(r["warmup"] + r["steps"]):
        t0 = time.perf_counter()
        out = model(x, lab, target_model=ema.module)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)
        if i >= r["warmup"]:
            times.append(time.perf_counter() - t0)
    res = dict(row=name, preset=r["preset"], grid=list(r["grid"]), tokens=n, token_dim=r["token_dim"],
               batch=r["batch"], params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
               train_ms_per_step=round(1000 * sorted(times)[len(times) // 2], 1), steps_timed=len(times))
    if r["sample"]:
        sc = SamplerConfig(num_ar_steps=64, cfg_scale=3.0, num_denoise_steps=100, flow_solver="heun")
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            generate(ema.module, torch.arange(r["sample"]) % cfg.num_classes, sc,
                     generators=row_generators(range(r["sample"]), "cpu"))
        res["sample_s_per_clip"] = round((time.perf_counter() - t0) / r["sample"], 2)
        res["sampler"] = "64 AR steps, 100 Heun steps, cfg 3, bf16 autocast"
    res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["threads"] = torch.get_num_threads()
    res["load_avg_1m"] = os.getloadavg()[0]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(ROWS), action="append")
    ap.add_argument("--json", default="docs/results/raw/video/bench_video.json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_one(a.child)))
        return 0
    rows = []
    for name in a.only or list(ROWS):
        p = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True)
        if p.returncode != 0:
            rows.append(dict(row=name, error=(p.stderr.strip().splitlines() or ["?"])[-1]))
        else:
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| row | preset | grid (tokens) | batch | params (M) | train ms/step | sample s/clip | peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['row']} | error: {r['error']} | | | | | | |")
            continue
        g = "×".join(map(str, r["grid"]))
        print(f"| {r['row']} | {r['preset']} | {g} ({r['tokens']}) | {r['batch']} | {r['params_m']} | "
              f"{r['train_ms_per_step']} | {r.get('sample_s_per_clip', '—')} | {r['peak_rss_mib']} |")
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(rows=rows, host_cpus=os.cpu_count()), indent=2) + "\n")
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
