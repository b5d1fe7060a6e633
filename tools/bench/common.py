"""Shared helpers of the benchmarks in ``tools/bench/`` (issue 6): machine info, a measured
matmul peak, memory peaks, median timing, JSON output and an analytic FLOP count of a D-JEPA
training step / sampling step.

Nothing here is imported by the library; speed is measured here, never in tests.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# ---------------------------------------------------------------------------- configs
#: The reference config of issue 6 (official D-JEPA code timed on this CPU): 8×8 tokens with 16
#: channels, width 256, 4 + 4 blocks, 4 heads, qk-norm, 64 buffer tokens, denoising MLP 3×256,
#: 10 classes, diffusion loss ×4 + prediction loss (EMA target). Dropout as the official code (0.1).
REFERENCE_TINY = dict(
    token_dim=16, grid=(8, 8), num_classes=10,
    encoder_dim=256, encoder_depth=4, encoder_heads=4,
    predictor_dim=256, predictor_depth=4, predictor_heads=4,
    qk_norm=True, buffer_size=64,
    loss=dict(mlp_depth=3, mlp_width=256, diffusion_batch_mul=4),
)

#: Reference numbers from issue 6 (official code, this machine's CPU, 2 threads, fp32).
REFERENCE_NUMBERS = {
    "train": {"ms_per_step": 1655.0, "ema_target_fwd_ms": 167.0, "forward_ms": 669.0,
              "backward_ms": 818.0, "optimizer_ema_ms": 13.0, "samples_per_s": 19.3,
              "peak_fraction": 0.67, "fp32_peak_gflops": 208.0, "batch": 32},
    "sample": {  # s/img, batch 16, K = 64, temperature 0.95
        (100, 1.0): 0.92, (100, 3.0): 1.59, (25, 1.0): 0.67, (25, 3.0): 1.24,
    },
    # paper, H800 (Table 4): B preset, batch 256
    "paper_h800": {"B_cfg_64ar_s_per_img": 0.120, "B_nocfg_32ar_s_per_img": 0.043},
}

CONFIG_NAMES = ("reference-tiny", "tiny", "B", "L", "H")


def build_config(name: str, *, token_dim: int = 16, grid: tuple[int, ...] = (16, 16),
                 num_classes: int = 1000, loss_kind: str = "diffusion",
                 prediction: bool = True, **overrides: Any):
    """A :class:`DJEPAConfig` for a benchmark config name (``reference-tiny`` or a preset)."""
    from djepa.core.config import DJEPAConfig, LossConfig, preset

    if name == "reference-tiny":
        values = dict(REFERENCE_TINY)
        loss = dict(values.pop("loss"))
        loss["kind"] = loss_kind
        if not prediction:
            loss["prediction_weight"] = 0.0
        values.update(overrides)
        return DJEPAConfig(**values, loss=LossConfig(**loss))
    loss = dict(kind=loss_kind)
    if not prediction:
        loss["prediction_weight"] = 0.0
    return preset(name, token_dim=token_dim, grid=grid, num_classes=num_classes, loss=loss,
                  **overrides)


# ---------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, threads, versions, load and (on CUDA) the GPU name."""
    from djepa.core.cpu_speed import installed

    speed = installed()
    flags = cpu_flags()
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_avg_1_5_15": load_average(),
        "malloc": "glibc, freed memory kept (djepa.core.cpu_speed.malloc)" if speed.malloc == "keep"
                  else "system default",
        "cpu_dropout_rng": speed.dropout_masks,
        "cpu_layer_norm_kernel": "bf16 inference" if speed.layer_norm else "plain",
    }
    try:
        import deepspeed  # noqa: F401 - version only

        info["deepspeed"] = deepspeed.__version__
    except Exception:  # not installed or broken import
        info["deepspeed"] = None
    try:
        import xformers

        info["xformers"] = xformers.__version__
    except Exception:
        info["xformers"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def setup_threads(threads: int | None, malloc: str = "tuned", dropout_rng: str = "numpy") -> None:
    """Torch CPU threads, and the CPU speed paths (:func:`djepa.core.cpu_speed.install`, as the
    CLIs' ``--cpu-speed on`` with two switches mapped onto its fields): ``malloc`` ``tuned``
    keeps freed memory mapped, ``system`` leaves glibc's defaults; ``dropout_rng`` is the CPU
    mask source (``numpy`` default, ``torch`` = torch's generator). The bf16 inference LayerNorm
    kernel is always on (as in the CLIs)."""
    from djepa.core.cpu_speed import SpeedSettings, install

    install(SpeedSettings(dropout_masks=dropout_rng, layer_norm=True,
                          malloc="keep" if malloc == "tuned" else "system"))
    if threads:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], *, device: torch.device, warmup: int = 2, repeat: int = 5,
                max_seconds: float | None = None) -> tuple[float, list[float]]:
    """Median wall time (s) of ``fn()`` after ``warmup`` calls; stops early past ``max_seconds``."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - start > max_seconds and len(times) >= 1:
            break
    return statistics.median(times), times


def matmul_peak(device: torch.device, dtype: torch.dtype, *, size: int | None = None,
                seconds: float = 1.0) -> float:
    """Measured matmul throughput in GFLOP/s: best of repeated ``size × size`` square matmuls."""
    if size is None:
        size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    c = a @ b
    sync(device)
    best = math.inf
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end or n < 3:
        t0 = time.perf_counter()
        torch.matmul(a, b, out=c)
        sync(device)
        best = min(best, time.perf_counter() - t0)
        n += 1
    return 2.0 * size**3 / best / 1e9


# ---------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory over a region: CUDA ``max_memory_allocated`` or the process's peak RSS.

    On CPU the reported peak is the process's RSS high-water mark (``VmHWM`` on Linux, else
    ``ru_maxrss``; in MiB, including the interpreter and torch itself), as the issue asks (RSS).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:  # VmHWM: this process's own peak (ru_maxrss carries a parent's peak across exec)
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def current_rss_mib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:
        return float("nan")


# ---------------------------------------------------------------------------- FLOPs
def _linear(m: float, k: int, n: int) -> float:
    return 2.0 * m * k * n


def _vit_forward_flops(batch: int, length: int, dim: int, depth: int, mlp_ratio: float) -> float:
    """Matmul FLOPs of ``depth`` pre-LN ViT blocks on ``batch × length`` tokens (qkv, attention
    scores and values, proj, 2-layer MLP). Norms and elementwise work are ignored."""
    m = batch * length
    hidden = int(dim * mlp_ratio)
    per_block = (_linear(m, dim, 3 * dim) + _linear(m, dim, dim)
                 + 2 * 2.0 * batch * length * length * dim  # q kᵀ and attn · v over all heads
                 + _linear(m, dim, hidden) + _linear(m, hidden, dim))
    return depth * per_block


def _mlp_head_flops(rows: float, cfg) -> float:
    """Denoising MLP forward FLOPs for ``rows`` tokens (per network evaluation)."""
    L = cfg.loss
    w, c = L.mlp_width, cfg.token_dim
    out = 2 * c if (L.kind == "diffusion" and L.learn_sigma) else c
    f = _linear(rows, c, w)                    # input_proj
    f += _linear(rows, cfg.predictor_dim, w)   # cond_embed
    f += _linear(rows, 256, w) + _linear(rows, w, w)  # time embed MLP
    f += L.mlp_depth * (_linear(rows, w, 3 * w) + 2 * _linear(rows, w, w))  # adaLN + MLP
    f += _linear(rows, w, 2 * w) + _linear(rows, w, out)  # final adaLN + linear
    return f


def train_step_flops(cfg, batch: int, *, mask_ratio: float | None = None) -> dict[str, float]:
    """Analytic matmul FLOPs of one training step (forward + backward; backward = 2× forward
    where gradients flow; the EMA target forward is forward only).

    Components (forward FLOPs):
      * encoder on ``Nb + Nv`` tokens (visible + buffer); ``Nv = N − ceil(N·r)`` at the mean
        masked fraction ``E[r]`` of the truncated normal (≈ 0.86 for the paper's settings);
      * token embedding / predictor embedding linears;
      * predictor on ``Nb + N`` tokens;
      * denoising MLP on ``masked × diffusion_batch_mul`` rows;
      * projector ``P → 4P → E`` on all N positions (the loss counts only masked ones, but the
        projector runs on all);
      * target encoder (EMA) on ``Nb + N`` tokens, no backward.
    """
    if mask_ratio is None:
        mask_ratio = expected_mask_ratio(cfg)
    n, nb = cfg.seq_len, cfg.buffer_size
    masked = max(1, min(n, math.ceil(n * mask_ratio)))
    visible = n - masked
    e, p = cfg.encoder_dim, cfg.predictor_dim
    enc = _vit_forward_flops(batch, nb + visible, e, cfg.encoder_depth, cfg.mlp_ratio)
    enc += _linear(batch * visible, cfg.token_dim, e)
    pred = _linear(batch * (nb + visible), e, p)
    pred += _vit_forward_flops(batch, nb + n, p, cfg.predictor_depth, cfg.mlp_ratio)
    mlp = _mlp_head_flops(batch * masked * cfg.loss.diffusion_batch_mul, cfg)
    proj = 0.0
    target = 0.0
    if cfg.loss.prediction_weight > 0:
        proj = _linear(batch * n, p, 4 * p) + _linear(batch * n, 4 * p, e)
        target = _vit_forward_flops(batch, nb + n, e, cfg.encoder_depth, cfg.mlp_ratio)
        target += _linear(batch * n, cfg.token_dim, e)
    grad_fwd = enc + pred + mlp + proj
    return {
        "encoder_fwd": enc, "predictor_fwd": pred, "denoising_mlp_fwd": mlp, "projector_fwd": proj,
        "target_encoder_fwd": target, "masked_tokens": masked, "visible_tokens": visible,
        "mask_ratio": mask_ratio,
        "total": 3.0 * grad_fwd + target,
    }


def expected_mask_ratio(cfg) -> float:
    """E[r] of TruncNormal(mean, std) on [min, 1] (closed form)."""
    mu, s, lo, hi = cfg.mask_ratio_mean, cfg.mask_ratio_std, cfg.mask_ratio_min, 1.0
    if s <= 0:
        return min(max(mu, lo), hi)
    a, b = (lo - mu) / s, (hi - mu) / s
    phi = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    Phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    return mu + s * (phi(a) - phi(b)) / (Phi(b) - Phi(a))


def sample_flops(cfg, batch: int, num_ar_steps: int, denoise_steps: int, cfg_on: bool,
                 heun: bool = False) -> dict[str, float]:
    """Analytic matmul FLOPs of Algorithm 1 for ``batch`` samples (forward only).

    Per AR step k (schedule of :func:`djepa.core.sampler.ar_schedule`): encoder on
    ``Nb + revealed`` tokens, predictor on ``Nb + N``, the denoising MLP on the tokens revealed
    this step × ``denoise_steps`` (× 2 for Heun); everything × 2 with CFG (doubled batch).
    """
    from djepa.core.sampler import ar_schedule

    n, nb = cfg.seq_len, cfg.buffer_size
    mul = 2 if cfg_on else 1
    evals = denoise_steps * (2 if heun else 1)
    revealed = 0
    backbone = head = 0.0
    for step in ar_schedule(n, num_ar_steps):
        if step.num_revealed == 0:
            continue
        bb = mul * batch
        backbone += _vit_forward_flops(bb, nb + revealed, cfg.encoder_dim, cfg.encoder_depth, cfg.mlp_ratio)
        backbone += _linear(bb * revealed, cfg.token_dim, cfg.encoder_dim)
        backbone += _linear(bb * (nb + revealed), cfg.encoder_dim, cfg.predictor_dim)
        backbone += _vit_forward_flops(bb, nb + n, cfg.predictor_dim, cfg.predictor_depth, cfg.mlp_ratio)
        head += evals * _mlp_head_flops(mul * batch * step.num_revealed, cfg)
        revealed += step.num_revealed
    return {"backbone": backbone, "denoising_mlp": head, "total": backbone + head}


# ---------------------------------------------------------------------------- output
def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (torch.dtype, torch.device)):
        return str(x)
    return x


def write_json(path: str | os.PathLike | None, data: dict[str, Any]) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(_jsonable(data), indent=2) + "\n")
    print(f"wrote {p}")


def print_table(rows: list[tuple[str, Any]], title: str | None = None) -> None:
    if title:
        print(title)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        if isinstance(v, float):
            v = f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
        print(f"  {k:<{width}}  {v}")


def add_common_args(ap) -> None:
    ap.add_argument("--config", default="reference-tiny", choices=CONFIG_NAMES)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU only)")
    ap.add_argument("--malloc", default="tuned", choices=("tuned", "system"),
                    help="glibc malloc: keep freed memory mapped as the CLIs do (tuned), or defaults")
    ap.add_argument("--dropout-rng", default="numpy", choices=("numpy", "torch"),
                    help="CPU dropout masks: NumPy PCG64 (djepa default) or torch's generator")
    ap.add_argument("--token-dim", type=int, default=16, help="token channels (presets)")
    ap.add_argument("--grid", type=int, nargs="+", default=[16, 16], help="token grid (presets)")
    ap.add_argument("--num-classes", type=int, default=1000, help="classes (presets)")
    ap.add_argument("--kernel", default="sdpa", choices=("sdpa", "xformers"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")


def config_from_args(args, *, loss_kind: str = "diffusion", prediction: bool = True):
    return build_config(args.config, token_dim=args.token_dim, grid=tuple(args.grid),
                        num_classes=args.num_classes, loss_kind=loss_kind, prediction=prediction,
                        attention_kernel=args.kernel)


def autocast_ctx(device: torch.device, precision: str):
    import contextlib

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
