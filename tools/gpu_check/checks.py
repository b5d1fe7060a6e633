"""The checks of ``tools/gpu_check.sh`` (issue 18), one function each, in run order.

A check takes a :class:`Context` and returns ``{"status": "pass" | "fail" | "skipped",
"summary": one line, "details": {...}}``; an exception is a failure (the runner records it and
goes on). On a GPU machine ``ctx.device`` is CUDA and the equality checks compare it with CPU
results of the same tiny models; in ``--dry-run`` the CPU stands in for CUDA (the comparison is
then CPU against CPU or a float64 reference; it shows the code paths run, not CUDA numerics).

Every djepa call goes through :mod:`api` (one place to change when the API moves).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import api

CPU = torch.device("cpu")


@dataclass
class Context:
    device: torch.device
    dry_run: bool
    work: Path
    logs: Path
    deadline: float  # time.time() by which the current check must end (the runner kills it)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def seconds_left(self) -> float:
        return self.deadline - time.time()


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[[Context], dict]
    timeout_s: float
    optional: bool = False  # skipped (not failed) when the time budget does not allow it
    what: str = ""


def _result(ok: bool, summary: str, **details: Any) -> dict:
    return {"status": "pass" if ok else "fail", "summary": summary, "details": details}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / max(‖b‖, tiny) in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ============================================================================ 1. environment
def check_environment(ctx: Context) -> dict:
    """torch / CUDA / cuDNN / NCCL / driver versions, GPU name and memory, bf16 support,
    xformers importable and its kernel usable (one small call on CUDA), DeepSpeed version."""
    import platform

    d: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                         "torch_cuda": torch.version.cuda, "platform": platform.platform(),
                         "cuda_available": torch.cuda.is_available(), "device": str(ctx.device),
                         "cpu_count": os.cpu_count()}
    try:
        import deepspeed

        d["deepspeed"] = deepspeed.__version__
    except Exception as e:  # report, do not fail: the engine check fails on its own
        d["deepspeed"] = f"import failed: {e}"
    problems: list[str] = []
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        d.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                 compute_capability=f"{props.major}.{props.minor}",
                 gpu_count=torch.cuda.device_count(), cudnn=torch.backends.cudnn.version(),
                 bf16_supported=torch.cuda.is_bf16_supported())
        try:
            d["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as e:
            d["nccl"] = f"unavailable: {e}"
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            d["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
            d["driver"] = d["nvidia_smi"].split(",")[0].strip()
        except Exception as e:
            d["driver"] = f"nvidia-smi failed: {e}"
        if not d["bf16_supported"]:
            problems.append("no bf16 support")
    else:
        d["bf16_supported"] = "cpu autocast (bf16 matmuls emulated unless AMX/AVX512-BF16)"
    try:
        import xformers
        import xformers.ops as xops

        d["xformers"] = xformers.__version__
        if ctx.cuda:
            x = torch.randn(1, 8, 2, 64, device=ctx.device, dtype=torch.float16)
            o = xops.memory_efficient_attention(x, x, x)
            _sync(ctx.device)
            d["xformers_kernel"] = "ok" if bool(torch.isfinite(o).all()) else "non-finite output"
            if d["xformers_kernel"] != "ok":
                problems.append("xformers kernel gave non-finite output")
        else:
            d["xformers_kernel"] = "not tried: xformers kernels are CUDA-only"
    except Exception as e:
        d["xformers"] = f"unusable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if ctx.cuda:
            problems.append(d["xformers"])
    summary = (f"torch {d['torch']} CUDA {d['torch_cuda']} "
               + (f"{d.get('gpu')} {d.get('gpu_memory_gib')} GiB driver {d.get('driver')} "
                  f"bf16 {d.get('bf16_supported')} " if ctx.cuda else "CPU (dry run) ")
               + f"xformers {d['xformers']} deepspeed {d['deepspeed']}")
    if problems:
        summary += " | " + "; ".join(problems)
    return _result(not problems, summary, **d)


# ============================================================================ 2. equality
def _reference_attention(q, k, v, key_padding_mask, attn_mask=None):
    """softmax(q kᵀ/√d) v in float64 on CPU over the allowed keys: not padding
    (``key_padding_mask [B, Lk]``, True = padding) and allowed by ``attn_mask`` (bool ``[Lq, Lk]``
    / ``[B, Lq, Lk]`` / ``[B, 1|H, Lq, Lk]``, True = may attend); a query row with no allowed key
    gives zeros (the library's rule)."""
    q, k, v = (t.double().cpu() for t in (q, k, v))
    B, H, Lq, _ = q.shape
    Lk = k.shape[-2]
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = torch.ones(B, H, Lq, Lk, dtype=torch.bool)
    if key_padding_mask is not None:
        allowed &= ~key_padding_mask.cpu()[:, None, None, :]
    if attn_mask is not None:
        m = attn_mask.cpu()
        m = m[None, None] if m.ndim == 2 else m[:, None] if m.ndim == 3 else m
        allowed &= m
    s = s.masked_fill(~allowed, float("-inf"))
    a = torch.softmax(s, -1).nan_to_num(0.0)  # a row with no allowed key: all -inf → NaN → 0
    a = a.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    return a @ v


#: Attention tolerances: max |out − ref| (outputs are O(1)): fp32 1e-5 (grads 1e-4), bf16 3e-2.
ATT_TOL = {"fp32": 1e-5, "fp32_grad": 1e-4, "bf16": 3e-2}


def _attention_masks(g: torch.Generator, B: int, L: int) -> dict[str, tuple[Any, Any]]:
    """The mask cases: ``name → (key_padding_mask [B, L] | None, attn_mask | None)``.

    * ``padding_mask``: ~30 % of keys padded, sample 2 all padding (→ zeros).
    * ``block_causal``: :func:`djepa.core.attention.block_causal_mask` ``[B, 1, L, L]``
      (Transfusion): sample 0 causal text (10) · full image block (20) · causal text (7);
      sample 1 image (16) · text (21); sample 2 one causal text span; with the last 5 keys of
      sample 1 also padded (both masks at once).
    * ``per_batch``: a random ``[B, L, L]`` bool (True = may attend, ~50 %), where query 3 of
      sample 0 and queries 0-4 of sample 2 have no allowed key (→ zeros, never NaN).
    """
    pad = torch.rand(B, L, generator=g) < 0.3
    pad[2] = True
    spans = [[(10, True), (20, False), (L - 30, True)], [(16, False), (L - 16, True)], [(L, True)]]
    seg = torch.zeros(B, L, dtype=torch.long)
    causal = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        at = 0
        for i, (n, c) in enumerate(spans[b % len(spans)]):
            seg[b, at:at + n], causal[b, at:at + n] = i, c
            at += n
    bc_pad = torch.zeros(B, L, dtype=torch.bool)
    bc_pad[1, -5:] = True
    per_batch = torch.rand(B, L, L, generator=g) < 0.5
    per_batch[0, 3] = False
    per_batch[2, :5] = False
    return {"no_mask": (None, None), "padding_mask": (pad, None),
            "block_causal": (bc_pad, api.block_causal_mask(seg, causal)),
            "per_batch": (None, per_batch)}


def _attention_cases(device: torch.device, kernel: str) -> dict[str, Any]:
    """Forward (fp32, bf16) and fp32 backward of ``kernel`` on ``device`` against the float64
    reference for every mask case of :func:`_attention_masks` (L = 37: not a multiple of 8, so
    the xformers bias-alignment path runs). Query rows with no allowed key must come out exactly
    zero, and every output finite (NaN counts as a failure)."""
    g = torch.Generator().manual_seed(0)
    B, H, L, d = 3, 4, 37, 32
    q, k, v = (torch.randn(B, H, L, d, generator=g) for _ in range(3))
    masks = _attention_masks(g, B, L)
    go = torch.randn(B, H, L, d, generator=g)
    out: dict[str, Any] = {}
    worst = []
    zeros_ok = True
    for mname, (m, am) in masks.items():
        ref = _reference_attention(q, k, v, m, am)
        empty = (ref.abs().sum(-1) == 0)  # [B, H, L]: query rows with no allowed key
        for prec, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            qd, kd, vd = (t.detach().to(device, dt, copy=True).requires_grad_(prec == "fp32")
                          for t in (q, k, v))
            md = None if m is None else m.to(device)
            amd = None if am is None else am.to(device)
            o = api.attention_kernel(qd, kd, vd, md, kernel, attn_mask=amd)
            oc = o.detach().double().cpu()
            err = float((oc - ref).abs().max())
            out[f"{mname}/{prec}/max_abs_err"] = err
            worst.append((err / ATT_TOL[prec], f"{mname}/{prec}"))
            if bool(empty.any()):
                z = bool(torch.isfinite(oc).all()) and bool((oc[empty] == 0).all())
                out[f"{mname}/{prec}/empty_rows_zero"] = z
                out[f"{mname}/empty_rows"] = int(empty.sum())
                zeros_ok &= z
            if prec == "fp32":
                (o * go.to(device)).sum().backward()
                qr, kr, vr = (t.double().requires_grad_(True) for t in (q, k, v))
                (_reference_attention(qr, kr, vr, m, am) * go.double()).sum().backward()
                gerr = max(float((a.grad.double().cpu() - b.grad).abs().max())
                           for a, b in ((qd, qr), (kd, kr), (vd, vr)))
                out[f"{mname}/fp32/grad_max_abs_err"] = gerr
                worst.append((gerr / ATT_TOL["fp32_grad"], f"{mname}/fp32 grad"))
    worst = [(r if math.isfinite(r) else math.inf, n) for r, n in worst]  # NaN fails too
    out["worst_vs_tolerance"] = max(worst)[0]
    out["worst_case"] = max(worst)[1]
    out["empty_rows_zero"] = zeros_ok
    out["mask_cases"] = list(masks)
    return out


def check_attention_sdpa(ctx: Context) -> dict:
    r = _attention_cases(ctx.device, "sdpa")
    ok = r["worst_vs_tolerance"] <= 1.0 and r["empty_rows_zero"]
    return _result(ok, f"SDPA on {ctx.device.type} vs float64 reference, masks "
                       f"{'/'.join(r['mask_cases'])}: worst {r['worst_case']} at "
                       f"{r['worst_vs_tolerance']:.2g}× tolerance, rows without keys zero "
                       f"{r['empty_rows_zero']} "
                       f"(fp32 {ATT_TOL['fp32']}, grad {ATT_TOL['fp32_grad']}, bf16 {ATT_TOL['bf16']})",
                   tolerances=ATT_TOL, **r)


def check_attention_xformers(ctx: Context) -> dict:
    """xformers' kernel against the float64 reference, and a tiny model whose attention kernel
    is xformers against the same weights with SDPA (eval features)."""
    if not ctx.cuda:
        return {"status": "skipped", "summary": "xformers kernels are CUDA-only (dry run on CPU)",
                "details": {}}
    r = _attention_cases(ctx.device, "xformers")
    sdpa = api.build_model(api.tiny_config(), seed=0, device=ctx.device).eval()
    xf = api.build_model(api.tiny_config(attention_kernel="xformers"), seed=0, device=ctx.device).eval()
    xf.load_state_dict(sdpa.state_dict())
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(4, 16, 4, generator=g).to(ctx.device)
    labels = torch.arange(4, device=ctx.device)
    vis = torch.stack([torch.randperm(16, generator=g)[:6].sort().values for _ in range(4)]).to(ctx.device)
    with torch.no_grad():
        a, b = api.features(sdpa, tokens, labels, vis), api.features(xf, tokens, labels, vis)
    r["model_features_rel_err"] = _rel(b, a)
    ok = r["worst_vs_tolerance"] <= 1.0 and r["empty_rows_zero"] and r["model_features_rel_err"] <= 1e-5
    return _result(ok, f"xformers (attn_bias) vs float64 reference, masks {'/'.join(r['mask_cases'])}: "
                       f"worst {r['worst_case']} at {r['worst_vs_tolerance']:.2g}× tolerance, rows "
                       f"without keys zero {r['empty_rows_zero']}; tiny model xformers vs SDPA "
                       f"features rel err {r['model_features_rel_err']:.2g} (tol 1e-5)",
                   tolerances=ATT_TOL, **r)


def _loss_and_grads(model, target, tokens, condition, device: torch.device, precision: str,
                    step_seed: int = 1) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One training forward (loss terms; the step's masks/noise from a CPU generator seeded
    ``step_seed``) and backward: ``({term: value}, {param name: fp32 CPU grad})``."""
    with api.autocast(device, precision):
        parts = api.train_forward(model, tokens, condition, target_model=target,
                                  generator=torch.Generator().manual_seed(step_seed))
    parts["loss"].backward()
    _sync(device)
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in parts.items()}, grads


def _train_step(device: torch.device, precision: str) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Losses and gradients of one training forward/backward of the tiny model (init on CPU,
    seed 0; batch and every random draw from CPU generators, so CPU and CUDA see the same)."""
    cfg = api.tiny_config(label_drop_prob=0.0)
    model = api.build_model(cfg, seed=0)
    api.randomize_zero_params(model)
    target = api.clone_to(model, device).eval()
    model = model.to(device).train()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(8, cfg.seq_len, cfg.token_dim, generator=g).to(device)
    labels = torch.randint(0, cfg.num_classes, (8,), generator=g).to(device)
    return _loss_and_grads(model, target, tokens, labels, device, precision)


#: Training-step tolerances: relative loss error and ‖Δgrad‖/‖grad‖ over all parameters.
STEP_TOL = {"fp32": {"loss": 1e-4, "grad": 1e-3}, "bf16": {"loss": 3e-2, "grad": 5e-2}}


#: The sequence-conditioned 1-D model (:func:`_seq_train_step`): width of a condition symbol, the
#: rows' token counts (of 12) and condition lengths (of 8).
SEQ_DC, SEQ_LENGTHS, SEQ_COND_LENGTHS = 6, [12, 9, 7, 12, 5, 10], [8, 5, 3, 8, 1, 6]


def _seq_train_step(device: torch.device, precision: str) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One training forward/backward of a tiny 1-D model with ``condition="sequence"`` (every
    block of φ and γ a joint MM-DiT block, 1-D RoPE on both streams): 6 rows of ragged length
    (``TokenBatch.from_lengths``) and a padded condition sequence (``SequenceInput`` with its
    padding mask); padding filled with large values (30·N(0, 1)), so attending to it would show.
    Condition dropout p = 0.3 draws from the step's CPU generator (the same rows drop on CPU and
    on the device). Init and data on CPU, then moved."""
    cfg = api.line_config(condition="sequence", condition_dim=SEQ_DC, joint_depth=None,
                          label_drop_prob=0.3)
    model = api.build_model(cfg, seed=0)
    api.perturb_params(model)
    target = api.clone_to(model, device).eval()
    model = model.to(device).train()
    g = torch.Generator().manual_seed(0)
    B, N, L = len(SEQ_LENGTHS), cfg.seq_len, max(SEQ_COND_LENGTHS)
    lengths = torch.tensor(SEQ_LENGTHS)
    tokens = torch.randn(B, N, cfg.token_dim, generator=g)
    pad = torch.arange(N)[None] >= lengths[:, None]
    tokens = torch.where(pad[..., None], 30 * torch.randn(tokens.shape, generator=g), tokens)
    values = torch.randn(B, L, SEQ_DC, generator=g)
    cpad = torch.arange(L)[None] >= torch.tensor(SEQ_COND_LENGTHS)[:, None]
    values = torch.where(cpad[..., None], 30 * torch.randn(values.shape, generator=g), values)
    batch = api.batch_to(api.token_batch(tokens, lengths), device)
    cond = api.sequence_input(values.to(device), cpad.to(device))
    return _loss_and_grads(model, target, batch, cond, device, precision)


def _check_train_step(ctx: Context, precision: str, step=_train_step, label: str = "") -> dict:
    ref_losses, ref_grads = step(CPU, "fp32")
    losses, grads = step(ctx.device, precision)
    loss_err = {k: abs(losses[k] - ref_losses[k]) / max(abs(ref_losses[k]), 1e-12) for k in ref_losses}
    names = sorted(ref_grads)
    flat = lambda gs: torch.cat([gs[n].reshape(-1) for n in names])  # noqa: E731
    grad_err = _rel(flat(grads), flat(ref_grads)) if names == sorted(grads) else float("inf")
    worst_param = max(names, key=lambda n: float((grads[n] - ref_grads[n]).norm()))
    tol = STEP_TOL[precision]
    ok = max(loss_err.values()) <= tol["loss"] and grad_err <= tol["grad"] \
        and all(math.isfinite(v) for v in losses.values())
    return _result(ok, f"{label}{precision} on {ctx.device.type} vs CPU fp32: loss rel err "
                       f"{max(loss_err.values()):.2g} (tol {tol['loss']}), grad rel err {grad_err:.2g} "
                       f"(tol {tol['grad']}) over {len(names)} tensors",
                   losses=losses, reference_losses=ref_losses, loss_rel_err=loss_err,
                   grad_rel_err=grad_err, worst_grad_tensor=worst_param, tolerances=tol)


def check_train_step_fp32(ctx: Context) -> dict:
    return _check_train_step(ctx, "fp32")


def check_train_step_bf16(ctx: Context) -> dict:
    return _check_train_step(ctx, "bf16")


_SEQ_LABEL = "sequence condition, joint blocks, ragged rows: "


def check_seq_condition_step_fp32(ctx: Context) -> dict:
    return _check_train_step(ctx, "fp32", _seq_train_step, _SEQ_LABEL)


def check_seq_condition_step_bf16(ctx: Context) -> dict:
    return _check_train_step(ctx, "bf16", _seq_train_step, _SEQ_LABEL)


def check_sample(ctx: Context) -> dict:
    """Algorithm 1 with a fixed seed: (a) with a CPU generator the device's tokens equal the
    CPU's up to float error (same orders and noise); (b) with a generator on the device the same
    seed gives bit-identical tokens and another seed other tokens; all finite."""
    cfg = api.tiny_config()
    base = api.build_model(cfg, seed=0)
    api.randomize_zero_params(base)
    scfg = api.sampler_config(ar_steps=4, denoise_steps=10, cfg_scale=2.0)
    labels = torch.arange(4)
    ref = api.generate(base.eval(), labels, scfg, generator=torch.Generator().manual_seed(0))
    model = api.clone_to(base, ctx.device).eval()
    dev_labels = labels.to(ctx.device)
    same_gen = api.generate(model, dev_labels, scfg, generator=torch.Generator().manual_seed(0))
    err = float((same_gen.cpu() - ref).abs().max())
    g = lambda s: torch.Generator(device=ctx.device).manual_seed(s)  # noqa: E731
    a = api.generate(model, dev_labels, scfg, generator=g(7))
    b = api.generate(model, dev_labels, scfg, generator=g(7))
    c = api.generate(model, dev_labels, scfg, generator=g(8))
    identical = bool(torch.equal(a, b))
    differs = not torch.equal(a, c)
    finite = bool(torch.isfinite(a).all() and torch.isfinite(same_gen).all())
    ok = err <= 1e-3 and identical and differs and finite and tuple(a.shape) == (4, 16, 4)
    return _result(ok, f"K=4 S=10 cfg 2: {ctx.device.type} vs CPU (CPU generator) max abs err "
                       f"{err:.2g} (tol 1e-3); {ctx.device.type} generator same seed identical "
                       f"{identical}, other seed differs {differs}, finite {finite}",
                   max_abs_err_vs_cpu=err, same_seed_identical=identical,
                   other_seed_differs=differs, finite=finite, shape=list(a.shape))


#: Per-row sampling: max |batched − alone| on the device (fp32; the rows meet other batch shapes
#: in the kernels, nothing else differs) and max |device − CPU| (as ``check_sample``).
ROW_TOL = {"batched_vs_alone": 1e-4, "device_vs_cpu": 1e-3}


def check_sample_per_row(ctx: Context) -> dict:
    """Algorithm 1 with one generator per row (issue 11, item 6) on a tiny 1-D class-conditional
    model (12-token line, RoPE): 3 rows of length 12 / 7 / 9 with 0 / 3 / 5 known tokens, seeds
    11 / 22 / 33, K=5, S=4, cfg 2.5, τ 0.9, x₀ clipped to (−1, 1) (unclipped, this random model's
    samples reach |x| ≈ 500 and float error grows with them). With CPU generators: the batch on the device equals
    each row sampled alone on the device, known tokens are kept bit for bit, padding stays zero,
    and the device equals the CPU. With generators on the device: the same holds for batched vs
    alone, the same seeds repeat bit for bit, all finite (in the dry run they are CPU ones)."""
    cfg = api.line_config(num_classes=4)
    base = api.build_model(cfg, seed=0)
    api.perturb_params(base)
    base.eval()
    scfg = api.sampler_config(ar_steps=5, denoise_steps=4, cfg_scale=2.5, temperature=0.9)
    lengths, known_counts, seeds, labels = [12, 7, 9], [0, 3, 5], [11, 22, 33], [0, 1, 3]
    N, D = cfg.seq_len, cfg.token_dim
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(3, N, D)
    maskable = torch.zeros(3, N, dtype=torch.bool)
    for i, (n, k) in enumerate(zip(lengths, known_counts)):
        tokens[i, :n] = torch.randn(n, D, generator=g)
        maskable[i, :n] = True
        maskable[i, torch.randperm(n, generator=g)[:k]] = False
    model = api.clone_to(base, ctx.device).eval()
    dev = ctx.device

    def batched(m, device, gens):
        b = api.batch_to(api.token_batch(tokens, lengths, maskable=maskable), device)
        return api.generate_rows(m, torch.tensor(labels, device=device), scfg, batch=b, generators=gens,
                                 clip_range=(-1.0, 1.0))

    def alone(m, device, i, gen):
        n = lengths[i]
        b = api.batch_to(api.token_batch(tokens[i:i + 1, :n], [n], maskable=maskable[i:i + 1, :n]), device)
        return api.generate_rows(m, torch.tensor([labels[i]], device=device), scfg, batch=b,
                                 generators=[gen], clip_range=(-1.0, 1.0))[0]

    d: dict[str, Any] = {"tolerances": ROW_TOL, "lengths": lengths, "known_counts": known_counts}
    problems: list[str] = []
    for where, mk in (("cpu_generators", lambda ss: api.row_generators(ss)),
                      ("device_generators", lambda ss: api.row_generators(ss, dev))):
        full = batched(model, dev, mk(seeds)).cpu()
        again = batched(model, dev, mk(seeds)).cpu()
        err = max(float((full[i, :n] - alone(model, dev, i, mk([s])[0]).cpu()).abs().max())
                  for i, (n, s) in enumerate(zip(lengths, seeds)))
        kept = all(torch.equal(full[i][~maskable[i] & (torch.arange(N) < n)],
                               tokens[i][~maskable[i] & (torch.arange(N) < n)])
                   for i, n in enumerate(lengths))
        pad_zero = all(bool((full[i, n:] == 0).all()) for i, n in enumerate(lengths))
        finite = bool(torch.isfinite(full).all())
        repeat = bool(torch.equal(full, again))
        d[where] = dict(batched_vs_alone_max_abs_err=err, known_kept=kept, padding_zero=pad_zero,
                        finite=finite, same_seeds_identical=repeat)
        if not (err <= ROW_TOL["batched_vs_alone"]):
            problems.append(f"{where}: batched vs alone {err:.2g} > {ROW_TOL['batched_vs_alone']}")
        for flag, ok in (("known tokens changed", kept), ("padding not zero", pad_zero),
                         ("non-finite", finite), ("same seeds not identical", repeat)):
            if not ok:
                problems.append(f"{where}: {flag}")
        if where == "cpu_generators":
            ref = batched(base, CPU, api.row_generators(seeds))
            d["device_vs_cpu_max_abs_err"] = float((full - ref).abs().max())
            if not d["device_vs_cpu_max_abs_err"] <= ROW_TOL["device_vs_cpu"]:
                problems.append(f"device vs CPU {d['device_vs_cpu_max_abs_err']:.2g} > {ROW_TOL['device_vs_cpu']}")
    c, x = d["cpu_generators"], d["device_generators"]
    summary = (f"rows of length {lengths}, known {known_counts}: batched vs alone max abs err "
               f"{c['batched_vs_alone_max_abs_err']:.2g} (CPU generators), "
               f"{x['batched_vs_alone_max_abs_err']:.2g} ({dev.type} generators) (tol "
               f"{ROW_TOL['batched_vs_alone']}); {dev.type} vs CPU {d['device_vs_cpu_max_abs_err']:.2g} "
               f"(tol {ROW_TOL['device_vs_cpu']}); known kept, padding zero, repeatable")
    if problems:
        summary += " | " + "; ".join(problems)
    return _result(not problems, summary, **d)


#: Activation checkpointing: ‖Δgrad‖/‖grad‖ over all parameters and |Δloss|/|loss|, checkpointed
#: vs plain on the same device. The recompute runs the same kernels on the same inputs, so this is
#: 0 unless a backward kernel accumulates in a nondeterministic order (atomics on CUDA).
CKPT_TOL = {"fp32": {"loss": 1e-6, "grad": 1e-5}, "bf16": {"loss": 1e-3, "grad": 1e-2}}
#: (condition, precision) cases; the sequence model's first block is a JointBlock, its second a
#: plain Block, so bf16 is run on that one only.
CKPT_CASES = (("class", "fp32"), ("sequence", "fp32"), ("sequence", "bf16"))


def _ckpt_grads(device: torch.device, condition: str, checkpointing: bool, precision: str):
    """Loss and gradients of one training step of a tiny 1-D model (``condition`` "class", or
    "sequence" with the first block joint), attention/projection dropout 0.1 on (the global RNG,
    seeded 7 before the step: checkpoint's recompute must replay the same masks), weights from
    seed 0 (+ perturbation) either way."""
    kw: dict[str, Any] = dict(attn_dropout=0.1, proj_dropout=0.1, activation_checkpointing=checkpointing)
    if condition == "sequence":
        kw.update(condition="sequence", condition_dim=SEQ_DC, joint_depth=1, label_drop_prob=0.0)
    else:
        kw.update(num_classes=4, label_drop_prob=0.0)
    model = api.build_model(api.line_config(**kw), seed=0)
    api.perturb_params(model)
    target = api.clone_to(model, device).eval()
    model = model.to(device).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 3, generator=g).to(device)
    cond = (torch.tensor([0, 1, 2], device=device) if condition == "class"
            else api.sequence_input(torch.randn(3, 4, SEQ_DC, generator=g).to(device)))
    torch.manual_seed(7)  # dropout masks (CPU and CUDA global RNGs)
    parts, grads = _loss_and_grads(model, target, x, cond, device, precision, step_seed=9)
    return parts["loss"], grads


def check_activation_checkpointing(ctx: Context) -> dict:
    """``DJEPAConfig.activation_checkpointing`` (each encoder / predictor block recomputed in
    backward, ``torch.utils.checkpoint``) gives the plain path's loss and gradients on the device:
    class condition (fp32) and sequence condition (a JointBlock and a Block; fp32 and bf16
    autocast), dropout on."""
    d: dict[str, Any] = {"tolerances": CKPT_TOL}
    problems: list[str] = []
    worst = 0.0
    for condition, precision in CKPT_CASES:
        l0, g0 = _ckpt_grads(ctx.device, condition, False, precision)
        l1, g1 = _ckpt_grads(ctx.device, condition, True, precision)
        names = sorted(g0)
        if names != sorted(g1) or len(names) < 10:
            problems.append(f"{condition}/{precision}: gradient sets differ")
            continue
        a, b = (torch.cat([gs[n].reshape(-1) for n in names]) for gs in (g1, g0))
        gerr = _rel(a, b)
        lerr = abs(l1 - l0) / max(abs(l0), 1e-12)
        bit = all(torch.equal(g1[n], g0[n]) for n in names)
        d[f"{condition}/{precision}"] = dict(loss=l0, loss_rel_err=lerr, grad_rel_err=gerr,
                                             bit_equal=bit, tensors=len(names))
        tol = CKPT_TOL[precision]
        if not (lerr <= tol["loss"] and gerr <= tol["grad"] and math.isfinite(l0)):
            problems.append(f"{condition}/{precision}: loss rel err {lerr:.2g}, grad rel err {gerr:.2g}")
        worst = max(worst, gerr / tol["grad"], lerr / tol["loss"])
    bits = sum(bool(v.get("bit_equal")) for k, v in d.items() if "/" in k)
    summary = (f"checkpointed vs plain on {ctx.device.type}, {' '.join('/'.join(c) for c in CKPT_CASES)}, "
               f"dropout on: "
               f"worst {worst:.2g}× tolerance (fp32 grad {CKPT_TOL['fp32']['grad']}, bf16 grad "
               f"{CKPT_TOL['bf16']['grad']}), {bits}/{len(CKPT_CASES)} bit-equal")
    if problems:
        summary += " | " + "; ".join(problems)
    return _result(not problems, summary, worst_vs_tolerance=worst, **d)


def check_from_pretrained(ctx: Context) -> dict:
    """A model trained 3 AdamW steps on CPU, exported with ``save_pretrained``, loaded with
    ``from_pretrained`` onto the device: every tensor bit-equal to the CPU one, on the device,
    and eval features equal to CPU's within 1e-5 (relative)."""
    cfg = api.tiny_config()
    model = api.build_model(cfg, seed=0)
    target = api.ema(model, 0.9)
    opt = torch.optim.AdamW(api.param_groups(model, 0.02), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(8, cfg.seq_len, cfg.token_dim, generator=g)
    labels = torch.randint(0, cfg.num_classes, (8,), generator=g)
    for i in range(3):
        opt.zero_grad()
        api.train_forward(model, tokens, labels, target_model=target.module,
                          generator=torch.Generator().manual_seed(i))["loss"].backward()
        opt.step()
        target.update(model)
    folder = ctx.work / "pretrained_export"
    api.save_pretrained(model, folder)
    loaded = api.from_pretrained(folder, ctx.device).eval()
    own, got = model.state_dict(), loaded.state_dict()
    same_keys = sorted(own) == sorted(got)
    bit_equal = same_keys and all(torch.equal(own[k], got[k].cpu()) for k in own)
    on_device = all(t.device.type == ctx.device.type for t in got.values())
    vis = torch.stack([torch.randperm(cfg.seq_len, generator=g)[:5].sort().values for _ in range(8)])
    with torch.no_grad():
        a = api.features(model.eval(), tokens, labels, vis)
        b = api.features(loaded, tokens.to(ctx.device), labels.to(ctx.device), vis.to(ctx.device))
    err = _rel(b, a)
    ok = bit_equal and on_device and err <= 1e-5
    return _result(ok, f"CPU export → {ctx.device.type}: {len(own)} tensors bit-equal {bit_equal}, "
                       f"all on {ctx.device.type} {on_device}; features rel err {err:.2g} (tol 1e-5)",
                   tensors=len(own), bit_equal=bit_equal, on_device=on_device, features_rel_err=err)


def check_fused_adamw(ctx: Context) -> dict:
    """``torch.optim.AdamW(fused=True)`` on the device (what the engine builds) against the
    for-loop AdamW on CPU: same parameters and gradients, 5 steps, weight decay on one group."""
    cfg = api.tiny_config()
    model = api.build_model(cfg, seed=0)
    dev_model = api.clone_to(model, ctx.device)
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.02)
    ref_opt = torch.optim.AdamW(api.param_groups(model, 0.02), foreach=False, **kw)
    opt = torch.optim.AdamW(api.param_groups(dev_model, 0.02), fused=True, **kw)
    g = torch.Generator().manual_seed(0)
    params = list(model.parameters())
    dev_params = list(dev_model.parameters())
    for _ in range(5):
        for p, q in zip(params, dev_params):
            grad = torch.randn(p.shape, generator=g)
            p.grad, q.grad = grad, grad.to(ctx.device)
        ref_opt.step()
        opt.step()
    _sync(ctx.device)
    err = max(float((q.detach().cpu() - p.detach()).abs().max() / p.detach().abs().max().clamp_min(1e-12))
              for p, q in zip(params, dev_params))
    fused = all(grp.get("fused") for grp in opt.param_groups)
    ok = err <= 1e-5 and fused
    return _result(ok, f"fused AdamW on {ctx.device.type} vs for-loop AdamW on CPU, 5 steps: "
                       f"max rel err {err:.2g} (tol 1e-5), fused {fused}",
                   max_rel_err=err, fused=fused, tensors=len(params))


# ============================================================================ 3. engine
def _engine(ctx: Context, zero_stage: int) -> dict:
    """DeepSpeed on one process (NCCL on CUDA, gloo in the dry run), ZeRO ``zero_stage``, bf16:
    4 steps straight vs 2 steps + checkpoint + resume + 2 steps; the losses, final weights and
    EMA must be bit-identical (deterministic algorithms on, as an exact resume needs)."""
    import torch.distributed as dist

    root = ctx.work / f"engine_zero{zero_stage}"
    data = api.toy_dataset(32)
    base = dict(max_steps=4, micro_batch_size=4, zero_stage=zero_stage, precision="bf16",
                lr=1e-3, weight_decay=0.02, ema_decay=0.9, checkpoint_every=2, log_every=1,
                tensorboard=False, progress_bar=False)

    devices: set[str] = set()

    def run(out: Path, seed: int, **kw) -> tuple[list[dict], dict, Any]:
        losses: list[dict] = []
        final: dict[str, torch.Tensor] = {}

        def cb(step, parts, module, ema):
            losses.append(dict(parts))
            if step == base["max_steps"]:
                final.update({n: p.detach().float().cpu().clone() for n, p in module.named_parameters()})
                devices.add(next(module.parameters()).device.type)

        model = api.build_model(api.tiny_config(), seed=seed)
        res = api.train(model, data, api.train_config(output_dir=str(out), **dict(base, **kw)),
                        step_callback=cb)
        return losses, final, res

    def diff(a: dict, b: dict) -> float:
        return max((float((a[k] - b[k]).abs().max()) for k in a if k in b), default=float("nan"))

    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    repeat_diff = None
    try:
        full_l, full_w, full = run(root / "full", 0)
        part_l, _, part = run(root / "resumed", 0, stop_at_step=2)
        rest_l, rest_w, rest = run(root / "resumed", 99)  # other init: weights must come from the checkpoint
        if diff(full_w, rest_w) != 0.0:  # baseline: does an uninterrupted run repeat bit for bit?
            _, again_w, _ = run(root / "full_again", 0)
            repeat_diff = diff(full_w, again_w)
    finally:
        torch.use_deterministic_algorithms(was)
    backend = dist.get_backend() if dist.is_initialized() else None
    device = ",".join(sorted(devices))
    losses_equal = part_l + rest_l == full_l
    weights_equal = full_w.keys() == rest_w.keys() and all(torch.equal(full_w[k], rest_w[k]) for k in full_w)
    ema_a, ema_b = full.ema.module.state_dict(), rest.ema.module.state_dict()
    ema_equal = all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    max_diff = diff(full_w, rest_w)
    # Not bit-equal although the uninterrupted run does not repeat bit for bit either (a kernel
    # without a deterministic version): accept a resume within twice the run-to-run difference.
    within_noise = (repeat_diff is not None and repeat_diff > 0 and max_diff <= 2 * repeat_diff)
    ckpt_ok = (root / "resumed" / "checkpoints" / "step_00000002").is_dir() and rest.resumed_from == "step_00000002"
    want_backend = "nccl" if ctx.cuda else "gloo"
    finite = all(math.isfinite(v) for l in full_l for v in l.values())
    exact = losses_equal and weights_equal and ema_equal
    ok = ((exact or within_noise) and ckpt_ok and backend == want_backend
          and device == ctx.device.type and full.finished and rest.finished and finite)
    note = "" if repeat_diff is None else (f"; uninterrupted run repeated differs by {repeat_diff:.2g}"
                                           + (" (resume within that noise)" if within_noise else ""))
    return _result(ok, f"ZeRO {zero_stage} bf16 {backend} on {device}: 4 steps vs 2 + resume + 2: "
                       f"losses equal {losses_equal}, weights equal {weights_equal} (max diff "
                       f"{max_diff:.2g}), EMA equal {ema_equal}, resumed from checkpoint {ckpt_ok}{note}",
                   repeat_max_abs_diff=repeat_diff, resume_within_run_to_run_noise=within_noise,
                   backend=backend, expected_backend=want_backend, device=device,
                   losses=[l["loss"] for l in full_l], resumed_losses=[l["loss"] for l in part_l + rest_l],
                   losses_equal=losses_equal, weights_equal=weights_equal, ema_equal=ema_equal,
                   weights_max_abs_diff=max_diff, resumed_from=rest.resumed_from)


def check_engine_zero1(ctx: Context) -> dict:
    return _engine(ctx, 1)


def check_engine_zero2(ctx: Context) -> dict:
    return _engine(ctx, 2)


# ============================================================================ 4. CLIs
_CLI_WRAPPER = (
    "import sys, importlib, torch\n"
    "rc = importlib.import_module(sys.argv[1]).main(sys.argv[2:])\n"
    "used = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0\n"
    "print(f'GPU_CHECK_CUDA_BYTES={used}', flush=True)\n"
    "sys.exit(int(rc or 0))\n"
)


def cli_env(dry_run: bool) -> dict[str, str]:
    """The environment of a one-process CLI run as the engine expects it without a launcher:
    no inherited RANK / WORLD_SIZE / LOCAL_RANK, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT
    (``djepa.core.train.distributed.ensure_environment`` would pick the same); the dry run adds
    ``DS_ACCELERATOR=cpu`` (gloo), CUDA leaves DeepSpeed to choose CUDA (NCCL)."""
    from djepa.core.train.distributed import free_port

    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "GROUP_RANK", "ROLE_RANK", "NODE_RANK"):
        env.pop(k, None)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    if dry_run:
        env["DS_ACCELERATOR"] = "cpu"
    else:
        env.pop("DS_ACCELERATOR", None)
    return env


def _run_cli(ctx: Context, name: str, args: list[str], timeout: float) -> dict[str, Any]:
    log = ctx.logs / f"{name}.log"
    cmd = [sys.executable, "-c", _CLI_WRAPPER, api.CLIS[name], *args]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd[:2] + ["<wrapper>"] + cmd[3:]) + "\n")
        f.flush()
        try:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=cli_env(ctx.dry_run),
                               timeout=max(5.0, timeout), cwd=ctx.work)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = None
    text = log.read_text()
    used = [int(x.split("=")[1]) for x in text.split() if x.startswith("GPU_CHECK_CUDA_BYTES=")]
    tail = [l for l in text.strip().splitlines() if "GPU_CHECK_CUDA_BYTES" not in l][-3:]
    return {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "cuda_bytes": used[0] if used else None,
            "log": str(log), "tail": tail}


def _cli_verdict(ctx: Context, name: str, r: dict, produced: bool, what: str) -> dict:
    used_cuda = (r["cuda_bytes"] or 0) > 0
    problems = []
    if r["rc"] != 0:
        problems.append("timed out" if r["rc"] is None else f"exit status {r['rc']}: {' | '.join(r['tail'])}")
    if not produced:
        problems.append(f"{what} missing")
    if ctx.cuda and not used_cuda:
        problems.append("ran without allocating CUDA memory")
    ok = not problems
    summary = (f"{name} {'ok' if ok else 'FAILED'} in {r['seconds']} s on "
               f"{'cuda' if used_cuda else 'cpu'} (peak {(r['cuda_bytes'] or 0) / 2**20:.0f} MiB CUDA)")
    if problems:
        summary += ": " + "; ".join(problems)
    return _result(ok, summary, **r)


TRAIN_ARGS = ["--preset", "tiny", "--batch-size", "8", "--max-steps", "3", "--checkpoint-every", "2",
              "--sample-every", "3", "--sample-ar-steps", "4", "--log-every", "1",
              "--warmup-steps", "0", "--precision", "bf16", "--zero-stage", "1"]


def check_cli_image_train(ctx: Context) -> dict:
    """``image-train`` tiny on the embedded digits: 3 steps (bf16, ZeRO 1), a checkpoint, one
    sample grid at step 3, the pretrained/ export. It has no ``--device``: DeepSpeed's
    accelerator decides (CUDA when present), verified by the process's CUDA peak memory."""
    out = ctx.work / "image_train"
    r = _run_cli(ctx, "image-train", TRAIN_ARGS + ["--output-dir", str(out)], ctx.seconds_left() - 2)
    produced = (out / "pretrained" / "model.safetensors").is_file() and any((out / "samples").glob("*.png"))
    return _cli_verdict(ctx, "image-train", r, produced, "pretrained/ export or sample grid")


def _trained_run(ctx: Context) -> Path:
    out = ctx.work / "image_train"
    if not (out / "pretrained" / "model.safetensors").is_file():
        raise RuntimeError("needs the run of check cli_image_train, which did not produce one")
    return out


def check_cli_image_sample(ctx: Context) -> dict:
    run = _trained_run(ctx)
    out = ctx.work / "image_sample"
    r = _run_cli(ctx, "image-sample", ["--checkpoint", str(run), "--classes", "0,3", "--num-per-class", "2",
                                       "--ar-steps", "4", "--denoise-steps", "10",
                                       "--device", ctx.device.type, "--output-dir", str(out),
                                       "--overwrite"], ctx.seconds_left() - 2)
    produced = (out / "grid.png").is_file() and len(list(out.glob("*/*.png"))) == 4
    return _cli_verdict(ctx, "image-sample", r, produced, "grid.png or 4 PNGs")


def check_cli_image_inpaint(ctx: Context) -> dict:
    run = _trained_run(ctx)
    import numpy as np
    from PIL import Image

    img = ctx.work / "digit.png"
    Image.fromarray((np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)).save(img)
    out = ctx.work / "image_inpaint"
    r = _run_cli(ctx, "image-inpaint", ["--checkpoint", str(run), "--image", str(img), "--box", "0,0,8,4",
                                        "--class", "3", "--denoise-steps", "10",
                                        "--device", ctx.device.type, "--output-dir", str(out)],
                 ctx.seconds_left() - 2)
    produced = (out / "result.png").is_file()
    return _cli_verdict(ctx, "image-inpaint", r, produced, "result.png")


# ============================================================================ 5. speed
#: Paper Table 4 (H800, B preset, batch 256), seconds per image.
PAPER_H800 = api.bench_module("common").REFERENCE_NUMBERS["paper_h800"]


def _speed_setup(ctx: Context) -> dict[str, Any]:
    """GPU: the B preset at Table 4's settings; dry run: the tiny preset at toy sizes."""
    if ctx.dry_run:
        return dict(cfg=api.tiny_config(), batch=4, ar={True: 4, False: 2}, denoise=5,
                    train_batch=8, train_steps=2, train_warmup=1, label="tiny (dry run)")
    return dict(cfg=api.preset_config("B"), batch=256, ar={True: 64, False: 32}, denoise=100,
                train_batch=256, train_steps=5, train_warmup=2, label="B")


def _speed_sample(ctx: Context, cfg_on: bool, compiled: bool = False) -> dict:
    S = api.bench_module("sample")
    s = _speed_setup(ctx)
    model = S.build(s["cfg"], ctx.device)
    warm_cfg = api.sampler_config(ar_steps=2, denoise_steps=2, cfg_scale=3.0 if cfg_on else 1.0)
    if compiled:
        from djepa.core.cpu_speed.compile import compile_backbone_for_sampling

        compile_backbone_for_sampling(model)
    t0 = time.perf_counter()
    with api.autocast(ctx.device, "bf16"):  # warm-up at the full batch: kernels, (compile)
        api.generate(model, torch.arange(s["batch"], device=ctx.device) % s["cfg"].num_classes, warm_cfg,
                     generator=torch.Generator(device=ctx.device).manual_seed(0), clip_range=None)
    _sync(ctx.device)
    warm = time.perf_counter() - t0
    K = s["ar"][cfg_on]
    r = S.run(s["cfg"], batch=s["batch"], device=ctx.device, ar_steps=K, denoise_steps=s["denoise"],
              cfg_scale=3.0 if cfg_on else 1.0, temperature=1.0, precision="bf16", repeat=1, warmup=0,
              model=model, max_seconds=max(1.0, ctx.seconds_left() - 10))
    paper = PAPER_H800["B_cfg_64ar_s_per_img" if cfg_on else "B_nocfg_32ar_s_per_img"]
    r.update(warmup_s=warm, paper_h800_s_per_img=paper, ratio_to_paper=r["s_per_img"] / paper,
             preset=s["label"], batch=s["batch"], ar_steps=K, denoise_steps=s["denoise"],
             cfg=3.0 if cfg_on else 1.0, precision="bf16", compiled=compiled)
    r.pop("runs", None)
    ok = r["finite"]
    return _result(ok, f"{s['label']} batch {s['batch']} K={K} S={s['denoise']} cfg {'3.0' if cfg_on else 'off'} "
                       f"bf16{' compiled' if compiled else ''}: {r['s_per_img']:.4f} s/img (paper H800 {paper}; "
                       f"×{r['ratio_to_paper']:.2f}), peak {r['peak_mem_mib']:.0f} MiB"
                   + ("" if ok else " | non-finite samples"), **r)


def check_speed_sample_cfg(ctx: Context) -> dict:
    return _speed_sample(ctx, True)


def check_speed_sample_nocfg(ctx: Context) -> dict:
    return _speed_sample(ctx, False)


def _speed_train(ctx: Context, compiled: bool) -> dict:
    T = api.bench_module("train_step")
    s = _speed_setup(ctx)
    batch, oom = s["train_batch"], []
    while True:  # out of memory: halve the batch (recorded) rather than lose the row
        try:
            r = T.run(s["cfg"], batch=batch, device=ctx.device, precision="bf16",
                      steps=s["train_steps"], warmup=s["train_warmup"], compile_=compiled,
                      max_seconds=max(1.0, ctx.seconds_left() - 10))
            break
        except torch.cuda.OutOfMemoryError:
            if batch <= 8:
                raise
            oom.append(batch)
            batch //= 2
            import gc

            gc.collect()
            torch.cuda.empty_cache()
    r.pop("flops", None)
    r.pop("all_step_ms", None)
    r.update(preset=s["label"], batch=batch, precision="bf16", compiled=compiled,
             out_of_memory_at_batch=oom)
    s = dict(s, train_batch=batch)
    ok = math.isfinite(r["final_loss"])
    return _result(ok, f"{s['label']} bf16 training step batch {s['train_batch']}"
                       f"{' compiled' if compiled else ''}: {r['ms_per_step']:.1f} ms, "
                       f"{r['samples_per_s']:.1f} samples/s, peak {r['peak_mem_mib']:.0f} MiB",
                   **r)


def check_speed_train_bf16(ctx: Context) -> dict:
    return _speed_train(ctx, False)


def check_speed_train_bf16_compiled(ctx: Context) -> dict:
    return _speed_train(ctx, True)


def check_speed_sample_cfg_compiled(ctx: Context) -> dict:
    return _speed_sample(ctx, True, compiled=True)


# ============================================================================ registry
CHECKS: list[Check] = [
    Check("environment", check_environment, 60, what="versions, GPU, xformers, bf16"),
    Check("attention_sdpa", check_attention_sdpa, 60, what="SDPA vs float64, ± mask, fp32/bf16"),
    Check("attention_xformers", check_attention_xformers, 60, what="xformers vs float64 and vs SDPA model"),
    Check("train_step_fp32", check_train_step_fp32, 60, what="losses + grads vs CPU"),
    Check("train_step_bf16", check_train_step_bf16, 60, what="autocast losses + grads vs CPU fp32"),
    Check("seq_condition_step_fp32", check_seq_condition_step_fp32, 60,
          what="sequence condition via joint blocks, ragged batch: losses + grads vs CPU"),
    Check("seq_condition_step_bf16", check_seq_condition_step_bf16, 60,
          what="the same in bf16 autocast vs CPU fp32"),
    Check("activation_checkpointing", check_activation_checkpointing, 90,
          what="checkpointed grads = plain, class + sequence condition, fp32 + bf16"),
    Check("sample_algorithm1", check_sample, 60, what="fixed-seed Algorithm 1"),
    Check("sample_per_row", check_sample_per_row, 60,
          what="per-row generators: ragged rows + known counts, batched = alone"),
    Check("from_pretrained", check_from_pretrained, 60, what="CPU export onto device"),
    Check("fused_adamw", check_fused_adamw, 60, what="fused AdamW vs CPU for-loop"),
    Check("engine_zero1_bf16", check_engine_zero1, 150, what="DeepSpeed 1 GPU, ckpt, exact resume"),
    Check("engine_zero2_bf16", check_engine_zero2, 150, what="DeepSpeed 1 GPU, ckpt, exact resume"),
    Check("cli_image_train", check_cli_image_train, 150, what="tiny, 3 steps, 1 sample grid"),
    Check("cli_image_sample", check_cli_image_sample, 90, what="--device, 4 images"),
    Check("cli_image_inpaint", check_cli_image_inpaint, 90, what="--device, 1 image"),
    Check("speed_sample_cfg", check_speed_sample_cfg, 200, what="Table 4: K=64, cfg"),
    Check("speed_sample_nocfg", check_speed_sample_nocfg, 100, what="Table 4: K=32, no cfg"),
    Check("speed_train_bf16", check_speed_train_bf16, 90, what="B training step"),
    Check("speed_train_bf16_compiled", check_speed_train_bf16_compiled, 180, optional=True,
          what="torch.compile on"),
    Check("speed_sample_cfg_compiled", check_speed_sample_cfg_compiled, 180, optional=True,
          what="torch.compile on"),
]

BY_NAME = {c.name: c for c in CHECKS}
