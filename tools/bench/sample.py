"""Benchmark Algorithm 1 (issue 6): median seconds per image of ``djepa.core.sampler.generate``
with random weights (speed only), K AR steps × S denoising steps, cfg on/off, diffusion (DDPM)
vs flow matching (Euler / Heun), batch B.

    uv run python tools/bench/sample.py --config reference-tiny --batch 16 --ar-steps 64 \
        --denoise-steps 100 --cfg 1 --head diffusion --json docs/results/sample.json

Also prints the analytic FLOPs per image and the split backbone (φ + γ) vs denoising MLP,
measured by timing the two parts of one run with a wrapper.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


def build(cfg, device, seed: int = 0):
    from djepa.core.model import DJEPA

    torch.manual_seed(seed)
    model = DJEPA(cfg).to(device).eval()
    # random weights everywhere (the zero-init AdaLN / final layer would make the MLP constant,
    # which does not change the speed, but keep the numbers non-degenerate)
    with torch.no_grad():
        for p in model.token_loss.net.parameters():
            if p.ndim >= 2 and float(p.abs().max()) == 0.0:
                p.normal_(std=0.02)
    return model


def run(cfg, *, batch: int, device: torch.device, ar_steps: int, denoise_steps: int,
        cfg_scale: float, temperature: float = 0.95, solver: str = "euler",
        precision: str = "fp32", repeat: int = 2, warmup: int = 1, seed: int = 0,
        split: bool = True, model=None, max_seconds: float = 90.0, compile_: bool = False) -> dict:
    from djepa.core.config import SamplerConfig
    from djepa.core.sampler import generate

    model = build(cfg, device, seed) if model is None else model
    if compile_:  # djepa.core.cpu_speed.compile: Inductor, frozen weights; the first call compiles
        from djepa.core.cpu_speed.compile import compile_backbone_for_sampling

        compile_backbone_for_sampling(model)
    scfg = SamplerConfig(num_ar_steps=ar_steps, cfg_scale=cfg_scale, temperature=temperature,
                         num_denoise_steps=denoise_steps, flow_solver=solver)
    labels = torch.arange(batch, device=device) % cfg.num_classes
    gen = torch.Generator(device=device).manual_seed(seed)

    head_times: list[float] = []
    raw_sample = model.token_loss.sample

    def timed_sample(*a, **k):
        C.sync(device)
        t0 = time.perf_counter()
        out = raw_sample(*a, **k)
        C.sync(device)
        head_times.append(time.perf_counter() - t0)
        return out

    def once():
        with C.autocast_ctx(device, precision):
            return generate(model, labels, scfg, generator=gen)

    if split:
        model.token_loss.sample = timed_sample
    mem = C.PeakMemory(device)
    try:
        with mem:
            totals, heads, first_call_s = [], [], None
            t_start = time.perf_counter()
            for i in range(warmup + repeat):
                head_times.clear()
                C.sync(device)
                t0 = time.perf_counter()
                out = once()
                C.sync(device)
                dt = time.perf_counter() - t0
                if i == 0:
                    first_call_s = dt
                if i == warmup - 1:
                    t_start = time.perf_counter()  # the budget counts timed runs only
                if i >= warmup:
                    totals.append(dt)
                    heads.append(sum(head_times))
                    if time.perf_counter() - t_start > max_seconds:
                        break
    finally:
        if split:
            del model.token_loss.sample
    med = statistics.median(totals)
    med_head = statistics.median(heads) if split else float("nan")
    flops = C.sample_flops(cfg, batch, ar_steps, denoise_steps, cfg_scale != 1.0,
                           heun=(cfg.loss.kind == "flow" and solver == "heun"))
    return {
        "s_per_img": med / batch, "s_per_batch": med, "runs": totals,
        "head_s_per_img": med_head / batch, "backbone_s_per_img": (med - med_head) / batch,
        "flops_per_img": flops["total"] / batch, "flops_split_per_img": {k: v / batch for k, v in flops.items()},
        "gflops_per_s": flops["total"] / med / 1e9,
        "finite": bool(torch.isfinite(out).all()),
        "peak_mem_mib": mem.peak_mib(),
        "compiled_backbone": compile_, "first_call_s": first_call_s,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ar-steps", type=int, default=64)
    ap.add_argument("--denoise-steps", type=int, default=100)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=0.95)
    ap.add_argument("--head", default="diffusion", choices=("diffusion", "flow"))
    ap.add_argument("--solver", default="euler", choices=("euler", "heun"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=90.0)
    ap.add_argument("--compile", action="store_true",
                    help="compile the backbone blocks for sampling (djepa.core.cpu_speed.compile; the "
                         "compile happens in the warm-up run, reported as first_call_s)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu":
        C.setup_threads(args.threads, args.malloc, args.dropout_rng)
    cfg = C.config_from_args(args, loss_kind=args.head)
    load_before = C.load_average()
    res = run(cfg, batch=args.batch, device=device, ar_steps=args.ar_steps,
              denoise_steps=args.denoise_steps, cfg_scale=args.cfg, temperature=args.temperature,
              solver=args.solver, precision=args.precision, repeat=args.repeat,
              warmup=args.warmup, seed=args.seed, max_seconds=args.max_seconds,
              compile_=args.compile)
    ref = None
    if args.config == "reference-tiny" and args.head == "diffusion":
        ref = C.REFERENCE_NUMBERS["sample"].get((args.denoise_steps, float(args.cfg)))
    data = {
        "benchmark": "sample", "config_name": args.config, "batch": args.batch,
        "ar_steps": args.ar_steps, "denoise_steps": args.denoise_steps, "cfg": args.cfg,
        "temperature": args.temperature, "head": args.head, "solver": args.solver,
        "precision": args.precision, "device": str(device), "machine": C.machine_info(device),
        "load_before": load_before, "load_after": C.load_average(), "results": res,
        "reference_s_per_img": ref,
    }
    head = args.head + (f"/{args.solver}" if args.head == "flow" else "")
    rows = [
        ("config", f"{args.config} B={args.batch} K={args.ar_steps} S={args.denoise_steps} "
                   f"cfg={args.cfg} {head} {args.precision}" + (" compiled" if args.compile else "")),
        ("device / threads", f"{device} / {torch.get_num_threads()}"),
        ("load avg (before, after)", f"{load_before[0]:.2f}, {data['load_after'][0]:.2f}"),
        ("s/img (median)", res["s_per_img"]),
        ("  backbone s/img", res["backbone_s_per_img"]),
        ("  denoising MLP s/img", res["head_s_per_img"]),
        ("GFLOP/img (analytic)", res["flops_per_img"] / 1e9),
        ("achieved GFLOP/s", res["gflops_per_s"]),
        ("peak memory MiB", res["peak_mem_mib"]),
        ("malloc", data["machine"]["malloc"]),
        ("first (warm-up) call s", res["first_call_s"]),
    ]
    if ref is not None:
        rows += [("reference s/img", ref), ("time / reference", res["s_per_img"] / ref)]
    C.print_table(rows, title="sample")
    C.write_json(args.json, data)
    return data


if __name__ == "__main__":
    main()
