"""Side-by-side switches in one run (issue 6):

* attention kernel: ``sdpa`` vs ``xformers`` (CUDA only; ``n/a`` elsewhere);
* ``torch.compile`` on/off (training step: blocks + denoising MLP compiled per module;
  sampling: the backbone blocks with frozen weights, ``djepa.core.cpu_speed.compile``);
* bf16 autocast vs fp32 (training step and sampling);
* CFG as one doubled batch (what ``djepa.core.sampler.generate`` does) vs two passes (a
  comparison variant written here only: two backbone passes and two denoising-MLP calls per step);
* CPU dropout masks from NumPy PCG64 (``djepa.core.cpu_speed.dropout``, the default) vs torch's generator;
* glibc malloc keeping freed memory (``djepa.core.cpu_speed.malloc``, what the CLIs do) vs glibc's
  defaults (CPU only: a process-wide setting, so each row is its own ``sample.py`` /
  ``train_step.py`` subprocess).

    uv run python tools/bench/switches.py --config reference-tiny --json docs/results/switches.json

Sampling switches use a shortened schedule by default (``--ar-steps 16 --denoise-steps 25``) to
keep the run short; every row of one table uses the same settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import sample as S  # noqa: E402
import train_step as T  # noqa: E402


@torch.no_grad()
def generate_two_pass(model, labels, scfg, generator=None):
    """Algorithm 1 with CFG as two separate passes (comparison only): the conditional and the
    null-class branch each run φ + γ and the denoising MLP on their own (same math as the
    doubled batch of ``generate``: guided ε = ε_u + s·(ε_c − ε_u), variance from the cond half)."""
    from djepa.core.sampler import ar_schedule, cfg_at

    cfgm = model.config
    n, d = cfgm.seq_len, cfgm.token_dim
    device = next(model.parameters()).device
    b = labels.shape[0]
    tokens = torch.zeros(b, n, d, device=device)
    gen_device = generator.device if generator is not None else device
    orders = torch.rand(b, n, generator=generator, device=gen_device).to(device).argsort(dim=1)
    cond, null = model.condition(labels, b), model.condition.null(b)
    head = model.token_loss
    model.eval()
    revealed = 0
    for step in ar_schedule(n, scfg.num_ar_steps):
        if step.num_revealed == 0:
            continue
        visible = orders[:, :revealed].sort(dim=1).values
        pred_idx = orders[:, revealed:revealed + step.num_revealed]
        z_c = model.features(tokens, cond, visible, pred_idx).reshape(-1, cfgm.predictor_dim)
        z_u = model.features(tokens, null, visible, pred_idx).reshape(-1, cfgm.predictor_dim)
        s = cfg_at(scfg.cfg_scale, scfg.cfg_schedule, step.mask_len, n)
        if cfgm.loss.kind == "diffusion":
            c = head.token_dim
            diffusion = head.sampling_diffusion(scfg.num_denoise_steps)

            def model_fn(x, t, z_c=z_c, z_u=z_u, s=s):
                oc, ou = head.net(x, t, z_c).float(), head.net(x, t, z_u).float()
                return torch.cat([ou[:, :c] + s * (oc[:, :c] - ou[:, :c]), oc[:, c:]], dim=-1)

            x = diffusion.p_sample_loop(model_fn, (z_c.shape[0], c), device=z_c.device,
                                        temperature=scfg.temperature, generator=generator)
        else:
            from djepa.core.flow import TIME_SCALE, ode_solve

            def velocity(x, t, z_c=z_c, z_u=z_u, s=s):
                tt = t * TIME_SCALE
                vc, vu = head.net(x, tt, z_c).float(), head.net(x, tt, z_u).float()
                return vu + s * (vc - vu)

            from djepa.core.diffusion import randn
            x0 = scfg.temperature * randn((z_c.shape[0], head.token_dim), generator=generator, device=z_c.device)
            x = ode_solve(velocity, x0, scfg.num_denoise_steps, scfg.flow_solver, scfg.flow_time_shift)
        tokens.scatter_(1, pred_idx.unsqueeze(-1).expand(-1, -1, d), x.float().reshape(b, step.num_revealed, d))
        revealed += step.num_revealed
    return tokens


def time_sampler(fn, device, repeat: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        C.sync(device)
        t0 = time.perf_counter()
        fn()
        C.sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(ap)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--sample-batch", type=int, default=16)
    ap.add_argument("--ar-steps", type=int, default=16)
    ap.add_argument("--denoise-steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], choices=("kernel", "compile", "precision", "cfg", "malloc", "dropout"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        C.setup_threads(args.threads, args.malloc, args.dropout_rng)
    from djepa.core.config import SamplerConfig
    from djepa.core.sampler import generate

    rows: list[dict] = []
    load0 = C.load_average()

    def train(precision="fp32", kernel="sdpa", compile_=False):
        cfg = C.build_config(args.config, token_dim=args.token_dim, grid=tuple(args.grid),
                             num_classes=args.num_classes, attention_kernel=kernel)
        r = T.run(cfg, batch=args.train_batch, device=device, precision=precision,
                  steps=args.train_steps, warmup=2, compile_=compile_, max_seconds=60)
        return r["ms_per_step"], r["samples_per_s"]

    def add(switch, variant, what, value, unit, note=""):
        rows.append(dict(switch=switch, variant=variant, what=what, value=value, unit=unit,
                         note=note, load=C.load_average()[0]))
        v = "n/a" if value is None else f"{value:,.1f}" if value >= 100 else f"{value:.3f}"
        print(f"{switch:<10} {variant:<22} {what:<34} {v:>10} {unit:<8} load {rows[-1]['load']:.2f} {note}", flush=True)

    # attention kernel
    if "kernel" not in args.skip:
        ms, sps = train("fp32", "sdpa")
        add("attention", "sdpa", "train ms/step fp32", ms, "ms")
        if device.type == "cuda":
            try:
                ms, sps = train("fp32", "xformers")
                add("attention", "xformers", "train ms/step fp32", ms, "ms")
            except RuntimeError as e:
                add("attention", "xformers", "train ms/step fp32", None, "ms", f"failed: {e}")
        else:
            add("attention", "xformers", "train ms/step fp32", None, "ms", "n/a: CUDA only")
    # precision
    if "precision" not in args.skip:
        for prec in ("fp32", "bf16"):
            ms, sps = train(prec)
            add("precision", prec, "train ms/step", ms, "ms", f"{sps:.1f} samples/s")
        cfg = C.build_config(args.config, token_dim=args.token_dim, grid=tuple(args.grid),
                             num_classes=args.num_classes)
        model = S.build(cfg, device)
        for prec in ("fp32", "bf16"):
            r = S.run(cfg, batch=args.sample_batch, device=device, ar_steps=args.ar_steps,
                      denoise_steps=args.denoise_steps, cfg_scale=args.cfg, precision=prec,
                      repeat=args.repeat, model=model, split=False)
            add("precision", prec, f"sample s/img K{args.ar_steps} S{args.denoise_steps} cfg{args.cfg:g}",
                r["s_per_img"], "s/img")
    # compile
    if "compile" not in args.skip:
        for prec in ("fp32", "bf16"):
            for comp in (False, True):
                try:
                    torch._dynamo.reset()  # a frame that hit the recompile limit stays eager otherwise
                    t0 = time.perf_counter()
                    ms, sps = train(prec, compile_=comp)
                    note = f"first run incl. compile {time.perf_counter() - t0:.0f} s" if comp else ""
                    add("compile", f"{'on' if comp else 'off'} {prec}", "train ms/step", ms, "ms", note)
                except Exception as e:  # compile toolchain missing etc.
                    add("compile", f"{'on' if comp else 'off'} {prec}", "train ms/step", None, "ms",
                        f"failed: {type(e).__name__}: {str(e)[:80]}")
        # sampling: the backbone compiled for inference (djepa.core.cpu_speed.compile, frozen weights)
        cfg = C.build_config(args.config, token_dim=args.token_dim, grid=tuple(args.grid),
                             num_classes=args.num_classes)
        for comp in (False, True):
            torch._dynamo.reset()  # the training rows above compiled Block.forward too
            r = S.run(cfg, batch=args.sample_batch, device=device, ar_steps=args.ar_steps,
                      denoise_steps=args.denoise_steps, cfg_scale=args.cfg, precision="bf16",
                      repeat=args.repeat, split=False, compile_=comp)
            note = f"first call incl. compile {r['first_call_s']:.0f} s" if comp else ""
            add("compile", f"{'on' if comp else 'off'} bf16 backbone",
                f"sample s/img K{args.ar_steps} S{args.denoise_steps} cfg{args.cfg:g}", r["s_per_img"], "s/img", note)
    # CFG doubled vs two passes
    if "cfg" not in args.skip:
        cfg = C.build_config(args.config, token_dim=args.token_dim, grid=tuple(args.grid),
                             num_classes=args.num_classes)
        model = S.build(cfg, device)
        labels = torch.arange(args.sample_batch, device=device) % cfg.num_classes
        scfg = SamplerConfig(num_ar_steps=args.ar_steps, cfg_scale=args.cfg, temperature=0.95,
                             num_denoise_steps=args.denoise_steps, cfg_schedule="linear")
        for prec in ("fp32", "bf16"):
            with C.autocast_ctx(device, prec):
                g = lambda: torch.Generator(device=device).manual_seed(0)  # noqa: E731
                one = time_sampler(lambda: generate(model, labels, scfg, generator=g()), device, args.repeat)
                two = time_sampler(lambda: generate_two_pass(model, labels, scfg, generator=g()), device, args.repeat)
            what = f"sample s/img K{args.ar_steps} S{args.denoise_steps} cfg{args.cfg:g}"
            add("cfg", f"doubled batch {prec}", what, one / args.sample_batch, "s/img")
            add("cfg", f"two passes {prec}", what, two / args.sample_batch, "s/img")

    # CPU dropout masks: NumPy PCG64 (default) vs torch's generator (training step, bf16)
    if "dropout" not in args.skip and device.type == "cpu":
        import dataclasses

        from djepa.core.cpu_speed import installed, using

        for rng in ("torch", "numpy"):
            with using(dataclasses.replace(installed(), dropout_masks=rng)):
                ms, sps = train("bf16")
            add("dropout", f"{rng} masks", "train ms/step bf16", ms, "ms", f"{sps:.1f} samples/s")
    # glibc malloc: kept freed memory vs defaults (subprocesses; bf16 as the CLIs run)
    if "malloc" not in args.skip and device.type == "cpu":
        here = Path(__file__).resolve().parent
        common = ["--config", args.config, "--threads", str(args.threads), "--precision", "bf16",
                  "--token-dim", str(args.token_dim), "--num-classes", str(args.num_classes),
                  "--grid", *map(str, args.grid)]
        jobs = [("train_step.py", ["--batch", str(args.train_batch), "--steps", str(max(args.train_steps, 4))],
                 "train ms/step bf16", "ms_per_step", 1.0, "ms"),
                ("sample.py", ["--batch", str(args.sample_batch), "--ar-steps", str(args.ar_steps),
                               "--denoise-steps", str(args.denoise_steps), "--cfg", str(args.cfg),
                               "--repeat", str(args.repeat)],
                 f"sample s/img K{args.ar_steps} S{args.denoise_steps} cfg{args.cfg:g} bf16", "s_per_img", 1.0, "s/img")]
        for script, extra, what, key, mult, unit in jobs:
            for mode in ("system", "tuned"):
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "r.json"
                    proc = subprocess.run([sys.executable, str(here / script), *common, *extra,
                                           "--malloc", mode, "--json", str(out)],
                                          capture_output=True, text=True)
                    if proc.returncode != 0 or not out.is_file():
                        add("malloc", mode, what, None, unit, f"failed: {proc.stderr.strip()[-120:]}")
                        continue
                    res = json.loads(out.read_text())["results"]
                add("malloc", "freed memory kept" if mode == "tuned" else "glibc defaults", what,
                    res[key] * mult, unit, f"peak RSS {res.get('peak_mem_mib', float('nan')):,.0f} MiB")

    data = {"benchmark": "switches", "config_name": args.config, "device": str(device),
            "machine": C.machine_info(device), "load_before": load0, "rows": rows,
            "settings": vars(args)}
    C.write_json(args.json, data)
    return data


if __name__ == "__main__":
    main()
