"""torch.profiler of one training step and one sampling AR step (issue 6: "where the time goes").

    uv run python tools/bench/profile_step.py --what train --precision fp32 --top 25
    uv run python tools/bench/profile_step.py --what sample --denoise-steps 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    C.add_common_args(ap)
    ap.add_argument("--what", default="train", choices=("train", "sample"))
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--denoise-steps", type=int, default=100)
    ap.add_argument("--ar-steps", type=int, default=64)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--sort", default="self_cpu_time_total")
    ap.add_argument("--out", default=None, help="write the table text here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    C.setup_threads(args.threads, args.malloc, args.dropout_rng)
    cfg = C.config_from_args(args)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    load = C.load_average()
    if args.what == "train":
        import train_step as T

        batch = args.batch or 32
        model, ema, opt = T.build(cfg, device)
        tokens = torch.randn(batch, cfg.seq_len, cfg.token_dim, device=device)
        labels = torch.randint(0, cfg.num_classes, (batch,), device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            with C.autocast_ctx(device, args.precision):
                out = model(tokens, labels, target_model=ema.module)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
            opt.step()
            ema.update(model)

        step()
        step()
        with profile(activities=acts) as prof:
            step()
    else:
        from djepa.core.config import SamplerConfig
        from djepa.core.sampler import generate

        import sample as S

        batch = args.batch or 16
        model = S.build(cfg, device)
        labels = torch.arange(batch, device=device) % cfg.num_classes
        # one AR step of the middle of the schedule: K AR steps, profile a run with K=ar_steps
        # but only the first `k` steps via a short schedule of 4 AR steps (same per-step work).
        scfg = SamplerConfig(num_ar_steps=4, cfg_scale=args.cfg, temperature=0.95,
                             num_denoise_steps=args.denoise_steps)
        with C.autocast_ctx(device, args.precision):
            generate(model, labels, scfg)
        with profile(activities=acts) as prof:
            with C.autocast_ctx(device, args.precision):
                generate(model, labels, scfg)
    table = prof.key_averages().table(sort_by=args.sort, row_limit=args.top)
    head = f"profile {args.what} {args.config} {args.precision} threads={torch.get_num_threads()} load={load[0]:.2f}"
    print(head)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(head + "\n" + table + "\n")


if __name__ == "__main__":
    main()
