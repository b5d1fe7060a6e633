"""Benchmark one D-JEPA training step (issue 6): forward (with the EMA target encoder) +
backward + AdamW + EMA, as ``djepa.core.train``'s engine does per micro-batch, in a plain loop
(no DeepSpeed) so that the numbers do not depend on the engine.

    uv run python tools/bench/train_step.py --config reference-tiny --batch 32 --steps 8 \
        --precision fp32 --json docs/results/train_fp32.json

Prints median ms/step, samples/s, the split (EMA-target forward, forward, backward,
optimizer + EMA), peak memory, the analytic FLOPs and the achieved fraction of the matmul peak
measured in the same run.
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


def compile_model(model, mode: str | None = None) -> None:
    """torch.compile the encoder/predictor blocks and the denoising MLP in place (per module,
    so the masking / gather / loss glue stays eager)."""
    for stack in (model.encoder.blocks, model.predictor.blocks):
        for blk in stack:
            blk.compile(mode=mode, dynamic=False)
    model.token_loss.net.compile(mode=mode, dynamic=False)
    if model.prediction_loss is not None:
        model.prediction_loss.projector.compile(mode=mode, dynamic=False)


def build(cfg, device, *, compile_: bool = False, seed: int = 0, adamw: str = "default"):
    from djepa.core.ema import EMA
    from djepa.core.model import DJEPA
    from djepa.core.train.params import param_groups

    torch.manual_seed(seed)
    model = DJEPA(cfg).to(device).train()
    ema = EMA(model, decay=0.9999).to(device)
    # "default" is what the engine builds (torch picks the for-loop kernel on CPU, foreach on
    # CUDA); "fused" / "foreach" are the faster kernels torch offers (comparison only).
    kw = {"fused": True} if adamw == "fused" else {"foreach": True} if adamw == "foreach" else {}
    opt = torch.optim.AdamW(param_groups(model, 0.02), lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.02, **kw)
    if compile_:
        compile_model(model)
        compile_model(ema.module)
    return model, ema, opt


def run(cfg, *, batch: int, device: torch.device, precision: str = "fp32", steps: int = 6,
        warmup: int = 2, compile_: bool = False, seed: int = 0, clip: float = 3.0,
        max_seconds: float = 90.0, adamw: str = "default") -> dict:
    """Time ``steps`` training steps after ``warmup``; returns medians (ms) and derived numbers."""
    model, ema, opt = build(cfg, device, compile_=compile_, seed=seed, adamw=adamw)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, cfg.seq_len, cfg.token_dim, generator=g).to(device)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)
    autocast = lambda: C.autocast_ctx(device, precision)  # noqa: E731

    # time the EMA target forward inside the model's forward by wrapping the bound method
    target = ema.module
    target_times: list[float] = []
    raw_encode = target.encode_target

    def timed_encode(*a, **k):
        C.sync(device)
        t0 = time.perf_counter()
        out = raw_encode(*a, **k)
        C.sync(device)
        target_times.append(time.perf_counter() - t0)
        return out

    target.encode_target = timed_encode  # instance attribute shadows the method

    rec = {"step": [], "forward": [], "backward": [], "optimizer_ema": [], "target": []}
    mem = C.PeakMemory(device)
    t_start = time.perf_counter()
    with mem:
        for i in range(warmup + steps):
            target_times.clear()
            opt.zero_grad(set_to_none=True)
            C.sync(device)
            t0 = time.perf_counter()
            with autocast():
                out = model(tokens, labels, target_model=target if cfg.loss.prediction_weight > 0 else None)
            C.sync(device)
            t1 = time.perf_counter()
            out.loss.backward()
            C.sync(device)
            t2 = time.perf_counter()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            ema.update(model)
            C.sync(device)
            t3 = time.perf_counter()
            if i >= warmup:
                tt = sum(target_times)
                rec["target"].append(tt)
                rec["forward"].append(t1 - t0 - tt)
                rec["backward"].append(t2 - t1)
                rec["optimizer_ema"].append(t3 - t2)
                rec["step"].append(t3 - t0)
                if time.perf_counter() - t_start > max_seconds:
                    break
    med = {k: 1e3 * statistics.median(v) for k, v in rec.items()}
    flops = C.train_step_flops(cfg, batch)
    return {
        "ms_per_step": med["step"], "samples_per_s": batch / (med["step"] / 1e3),
        "ema_target_fwd_ms": med["target"], "forward_ms": med["forward"],
        "backward_ms": med["backward"], "optimizer_ema_ms": med["optimizer_ema"],
        "steps_timed": len(rec["step"]), "all_step_ms": [1e3 * t for t in rec["step"]],
        "peak_mem_mib": mem.peak_mib(), "flops_per_step": flops["total"], "flops": flops,
        "gflops_per_s": flops["total"] / (med["step"] / 1e3) / 1e9,
        "num_params": sum(p.numel() for p in model.parameters()),
        "final_loss": float(out.loss.detach()),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile blocks + denoising MLP")
    ap.add_argument("--no-prediction-loss", action="store_true", help="MAR baseline (w_p = 0)")
    ap.add_argument("--loss", default="diffusion", choices=("diffusion", "flow"))
    ap.add_argument("--clip", type=float, default=3.0, help="grad-norm clip (engine default 3.0; 0 = off)")
    ap.add_argument("--max-seconds", type=float, default=90.0)
    ap.add_argument("--adamw", default="default", choices=("default", "foreach", "fused"),
                    help="AdamW kernel (engine: default)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu":
        C.setup_threads(args.threads, args.malloc, args.dropout_rng)
    cfg = C.config_from_args(args, loss_kind=args.loss, prediction=not args.no_prediction_loss)
    peak_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peaks = {"fp32": C.matmul_peak(device, torch.float32),
             "bf16": C.matmul_peak(device, torch.bfloat16)}
    load_before = C.load_average()
    res = run(cfg, batch=args.batch, device=device, precision=args.precision, steps=args.steps,
              warmup=args.warmup, compile_=args.compile, seed=args.seed, clip=args.clip,
              max_seconds=args.max_seconds, adamw=args.adamw)
    res["peak_fraction"] = res["gflops_per_s"] / peaks["bf16" if peak_dtype == torch.bfloat16 else "fp32"]
    res["peak_fraction_of_fp32"] = res["gflops_per_s"] / peaks["fp32"]
    data = {
        "benchmark": "train_step", "config_name": args.config, "batch": args.batch,
        "precision": args.precision, "compile": args.compile, "loss": args.loss, "adamw": args.adamw,
        "prediction_loss": not args.no_prediction_loss, "device": str(device),
        "config": C.REFERENCE_TINY if args.config == "reference-tiny" else args.config,
        "machine": C.machine_info(device), "load_before": load_before,
        "load_after": C.load_average(), "matmul_peak_gflops": peaks, "results": res,
        "reference": C.REFERENCE_NUMBERS["train"] if args.config == "reference-tiny" else None,
    }
    ref = C.REFERENCE_NUMBERS["train"]
    rows = [
        ("config", f"{args.config} batch {args.batch} {args.precision}"
                   f"{' compile' if args.compile else ''}{'' if not args.no_prediction_loss else ' no-Lp'}"),
        ("device / threads", f"{device} / {torch.get_num_threads()}"),
        ("load avg (before, after)", f"{load_before[0]:.2f}, {data['load_after'][0]:.2f}"),
        ("ms/step (median)", res["ms_per_step"]),
        ("samples/s", res["samples_per_s"]),
        ("  EMA target fwd ms", res["ema_target_fwd_ms"]),
        ("  forward ms", res["forward_ms"]),
        ("  backward ms", res["backward_ms"]),
        ("  optimizer+EMA ms", res["optimizer_ema_ms"]),
        ("peak memory MiB", res["peak_mem_mib"]),
        ("GFLOP/step (analytic)", res["flops_per_step"] / 1e9),
        ("achieved GFLOP/s", res["gflops_per_s"]),
        ("matmul peak fp32 / bf16 GFLOP/s", f"{peaks['fp32']:.0f} / {peaks['bf16']:.0f}"),
        ("fraction of peak (own dtype)", res["peak_fraction"]),
        ("fraction of fp32 peak", res["peak_fraction_of_fp32"]),
    ]
    if args.config == "reference-tiny" and args.batch == ref["batch"] and not args.no_prediction_loss:
        rows.append(("reference ms/step, samples/s", f"{ref['ms_per_step']:.0f}, {ref['samples_per_s']}"))
        rows.append(("speed-up vs reference", ref["ms_per_step"] / res["ms_per_step"]))
    C.print_table(rows, title="train_step")
    C.write_json(args.json, data)
    return data


if __name__ == "__main__":
    main()
