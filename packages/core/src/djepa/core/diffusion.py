"""Stateless Gaussian diffusion math for per-token ε-prediction (§3.3, Eq. 4, App. B).

ADM / improved-DDPM style (Dhariwal & Nichol 2021; Nichol & Dhariwal 2021), as used by MAR's
``DiffLoss`` and by D-JEPA: 1000 training steps, ε-prediction with the *learned-range*
variance (the model outputs ``[ε, v]``, ``v ∈ [−1, 1]`` interpolating ``log β_t`` and
``log β̃_t``), loss = MSE(ε) + VLB term (stop-gradient on the predicted mean), sampling with
respaced DDPM (100 steps) and a temperature that multiplies the per-step noise σ_t only.

Tables are computed in float64 (as ADM's numpy) and handed to the math as float32 copies on
the inputs' device (ADM likewise extracts float64 and casts to float32), so the same code runs
on CPU, CUDA and float64-less devices. All the math runs in float32 with autocast disabled.

Continuous tokens, hence one deliberate change from ADM: at ``t = 0`` the VLB's decoder term
is the *continuous* Gaussian negative log-likelihood ``−log N(x_0; μ_θ, Σ_θ)`` (mean over
channels, in bits), not ADM's discretized 8-bit likelihood, which only makes sense for pixels
in [−1, 1] quantised to 256 levels. It can be negative (it is a density).

Units: the VLB term is in bits per channel (nats / ln 2), as ADM; the MSE is per channel.

Respacing (ADM's ``SpacedDiffusion``): keep a subset of steps, rebuild the betas so that ᾱ
at the kept steps equals the original ᾱ, and call the model with the ORIGINAL timestep
indices through ``timestep_map``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor

from djepa.core.rng import RowStreams

__all__ = [
    "betas_for_schedule",
    "space_timesteps",
    "respace_betas",
    "respaced",
    "normal_kl",
    "gaussian_log_likelihood",
    "GaussianDiffusion",
    "ModelFn",
]

#: ``model_fn(x_t [M, C] float32, t_model [M] long original indices) -> [M, C or 2·C]``.
ModelFn = Callable[[Tensor, Tensor], Tensor]


def betas_for_schedule(schedule: Literal["linear", "cosine"], num_timesteps: int) -> Tensor:
    """β_1..β_T of a named schedule, ``[T]`` float64 (CPU).

    * ``"linear"``: ADM's scaled linear schedule, ``scale = 1000 / T``, evenly spaced from
      ``1e-4·scale`` to ``2e-2·scale`` (paper App. B; ᾱ_T ≈ 4.0e-5 for T = 1000).
    * ``"cosine"``: Nichol & Dhariwal's ``ᾱ(s) = cos²((s + 0.008)/1.008 · π/2)``,
      ``β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999)`` (MAR's code; ᾱ_T ≈ 2.4e-9 for T = 1000).

    Raises:
        ValueError: unknown schedule or ``num_timesteps < 1``.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if schedule == "linear":
        scale = 1000.0 / num_timesteps
        return torch.linspace(1e-4 * scale, 2e-2 * scale, num_timesteps, dtype=torch.float64)
    if schedule == "cosine":

        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
            for i in range(num_timesteps)
        ]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {schedule!r}; choose 'linear' or 'cosine'")


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """ADM's even spacing of kept steps; e.g. ``(1000, 100)`` → ``[0, 10, 20, …, 989, 999]``.

    The range ``0..T−1`` is cut into ``len(section_counts)`` equal sections and each section
    keeps its count of steps, evenly spaced and rounded, always including both ends of the
    section when its count is > 1 (so ``n ≥ 2`` keeps 0 and T−1). ``n = 1`` keeps only step 0
    (ADM's behaviour). ``section_counts`` may be an int, a comma-separated string (``"100"``,
    ``"10,15,20"``) or a sequence of ints.

    Returns:
        Sorted list of kept original indices.

    Raises:
        ValueError: a section asks for more steps than it has, or a count < 1.
    """
    if isinstance(section_counts, int):
        counts = [section_counts]
    elif isinstance(section_counts, str):
        counts = [int(x) for x in section_counts.split(",")]
    else:
        counts = [int(x) for x in section_counts]
    if any(c < 1 for c in counts):
        raise ValueError(f"every section count must be >= 1, got {counts}")
    size_per = num_timesteps // len(counts)
    extra = num_timesteps % len(counts)
    start_idx = 0
    all_steps: list[int] = []
    for i, section_count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide a section of {size} steps into {section_count}")
        frac_stride = 1.0 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return sorted(set(all_steps))


def respace_betas(betas: Tensor, use_timesteps: Iterable[int]) -> tuple[Tensor, Tensor]:
    """Betas of the sub-chain that keeps ``use_timesteps`` (ADM ``SpacedDiffusion``).

    ``β'_k = 1 − ᾱ_{s_k} / ᾱ_{s_{k−1}}`` (with ``ᾱ_{s_{−1}} = 1``), so that the respaced
    ᾱ'_k equals the original ᾱ at the k-th kept step.

    Returns:
        ``(new_betas [n] float64, timestep_map [n] long)``; ``timestep_map[k]`` is the original
        index the model must be called with.

    Raises:
        ValueError: empty or out-of-range ``use_timesteps``.
    """
    betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
    keep = sorted(set(int(i) for i in use_timesteps))
    if not keep or keep[0] < 0 or keep[-1] >= betas.numel():
        raise ValueError(f"use_timesteps must be non-empty indices in [0, {betas.numel()})")
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    new_betas = []
    last = 1.0
    for i in keep:
        ac = float(alphas_cumprod[i])
        new_betas.append(1.0 - ac / last)
        last = ac
    return torch.tensor(new_betas, dtype=torch.float64), torch.tensor(keep, dtype=torch.long)


def respaced(betas: Tensor, use_timesteps: Iterable[int]) -> GaussianDiffusion:
    """A :class:`GaussianDiffusion` on the kept steps, calling the model with original indices."""
    new_betas, timestep_map = respace_betas(betas, use_timesteps)
    return GaussianDiffusion(new_betas, timestep_map=timestep_map)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats (ADM)."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """Elementwise continuous log-density ``log N(x; mean, e^log_var)`` in nats."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def _mean_flat(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(1, x.dim()))) if x.dim() > 1 else x


class GaussianDiffusion:
    """Gaussian diffusion on a β schedule (ADM / improved DDPM), ε-prediction.

    Args:
        betas: ``[T]`` β_t (float64 recommended), all in (0, 1].
        timestep_map: ``[T]`` long, original step index per step (respacing); identity if None.

    Tables (``[T]`` float64, CPU): ``betas``, ``alphas_cumprod`` (ᾱ_t), ``alphas_cumprod_prev``,
    ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``, ``sqrt_recip_alphas_cumprod``,
    ``sqrt_recipm1_alphas_cumprod``, ``posterior_variance`` (β̃_t), ``posterior_log_variance_clipped``
    (β̃_0 replaced by β̃_1 before the log), ``posterior_mean_coef1/2``.

    Model output convention: ``[M, C]`` = ε with the *fixed large* variance of ADM
    (β_t, with β̃_1 at t = 0), or ``[M, 2·C]`` = ``[ε, v]`` with the learned-range variance
    ``log σ² = (v+1)/2 · log β_t + (1 − (v+1)/2) · log β̃_t``.
    """

    def __init__(self, betas: Tensor, timestep_map: Tensor | None = None) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu().reshape(-1)
        if betas.numel() < 1 or bool((betas <= 0).any()) or bool((betas > 1).any()):
            raise ValueError("betas must be a non-empty 1-D tensor with values in (0, 1]")
        self.num_timesteps = int(betas.numel())
        self.betas = betas
        self.timestep_map = (
            torch.arange(self.num_timesteps, dtype=torch.long)
            if timestep_map is None
            else torch.as_tensor(timestep_map, dtype=torch.long).cpu()
        )
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        one = torch.ones(1, dtype=torch.float64)
        self.alphas_cumprod_prev = torch.cat([one, self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        if self.num_timesteps > 1:
            clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        else:  # a single step has β̃_0 = 0; fall back to β_0 so the log stays finite
            clipped = betas.clone()
        self.posterior_log_variance_clipped = clipped.log()
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )
        # fixed-large variance (ADM, learn_sigma=False): β̃_1 at t = 0, β_t afterwards
        if self.num_timesteps > 1:
            fixed_large = torch.cat([self.posterior_variance[1:2], betas[1:]])
        else:
            fixed_large = betas
        self.fixed_large_log_variance = fixed_large.log()
        self.log_betas = betas.log()
        self._device_tables: dict[tuple[str, torch.device], Tensor] = {}

    # ------------------------------------------------------------------ helpers
    def _extract(self, name: str, t: Tensor, ndim: int) -> Tensor:
        """``table[t]`` as float32 on ``t``'s device, shaped ``[M, 1, …]`` to broadcast."""
        key = (name, t.device)
        table = self._device_tables.get(key)
        if table is None:
            table = getattr(self, name).to(device=t.device, dtype=torch.float32)
            self._device_tables[key] = table
        out = table[t.long()]
        return out.reshape(out.shape + (1,) * (ndim - out.dim()))

    def _map(self, t: Tensor) -> Tensor:
        """Original timestep indices for the model (respacing)."""
        key = ("timestep_map", t.device)
        table = self._device_tables.get(key)
        if table is None:
            table = self.timestep_map.to(t.device)
            self._device_tables[key] = table
        return table[t.long()]

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε.

        ``x0``, ``noise``: ``[M, C]``; ``t``: ``[M]`` long → ``[M, C]`` float32.
        """
        with torch.autocast(device_type=x0.device.type, enabled=False):
            x0 = x0.float()
            return (
                self._extract("sqrt_alphas_cumprod", t, x0.dim()) * x0
                + self._extract("sqrt_one_minus_alphas_cumprod", t, x0.dim()) * noise.float()
            )

    def q_posterior_mean_variance(
        self, x0: Tensor, xt: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q(x_{t−1} | x_t, x_0): ``(mean, variance, log_variance_clipped)``, each ``[M, C]`` float32.

        mean = β_t√ᾱ_{t−1}/(1−ᾱ_t)·x_0 + (1−ᾱ_{t−1})√α_t/(1−ᾱ_t)·x_t,
        variance β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t)·β_t.
        """
        x0, xt = x0.float(), xt.float()
        n = x0.dim()
        mean = (
            self._extract("posterior_mean_coef1", t, n) * x0
            + self._extract("posterior_mean_coef2", t, n) * xt
        )
        var = self._extract("posterior_variance", t, n).expand_as(x0)
        log_var = self._extract("posterior_log_variance_clipped", t, n).expand_as(x0)
        return mean, var, log_var

    def predict_xstart_from_eps(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x̂_0 = √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε."""
        n = xt.dim()
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, n) * xt
            - self._extract("sqrt_recipm1_alphas_cumprod", t, n) * eps
        )

    # ------------------------------------------------------------------ reverse process
    def p_mean_variance(
        self,
        model_output: Tensor,
        xt: Tensor,
        t: Tensor,
        clip_range: tuple[float, float] | None = None,
    ) -> dict[str, Tensor]:
        """p_θ(x_{t−1} | x_t) from a model output (ADM ``p_mean_variance``, ε-prediction).

        Args:
            model_output: ``[M, C]`` (ε, fixed-large variance) or ``[M, 2·C]`` (ε, v).
            xt: ``[M, C]``; t: ``[M]`` long indices into *this* diffusion's tables.
            clip_range: if given, x̂_0 is clamped to ``[lo, hi]`` *before* the posterior mean is
                computed (ADM ``clip_denoised``); the returned ``eps`` stays the model's ε (not
                re-derived from the clipped x̂_0), the mean is the posterior mean of the clipped x̂_0.

        Returns:
            dict of float32 ``[M, C]``: ``mean``, ``variance``, ``log_variance``, ``pred_xstart``,
            ``eps``.

        Raises:
            ValueError: output channels are neither C nor 2·C.
        """
        with torch.autocast(device_type=xt.device.type, enabled=False):
            xt = xt.float()
            out = model_output.float()
            c = xt.shape[-1]
            n = xt.dim()
            if out.shape[-1] == 2 * c:
                eps, v = out[..., :c], out[..., c:]
                min_log = self._extract("posterior_log_variance_clipped", t, n)
                max_log = self._extract("log_betas", t, n)
                frac = (v + 1.0) / 2.0
                log_var = frac * max_log + (1.0 - frac) * min_log
            elif out.shape[-1] == c:
                eps = out
                log_var = self._extract("fixed_large_log_variance", t, n).expand_as(xt)
            else:
                raise ValueError(f"model output has {out.shape[-1]} channels; expected {c} or {2 * c}")
            pred_xstart = self.predict_xstart_from_eps(xt, t, eps)
            if clip_range is not None:
                pred_xstart = pred_xstart.clamp(float(clip_range[0]), float(clip_range[1]))
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, xt, t)
            return {
                "mean": mean,
                "variance": torch.exp(log_var),
                "log_variance": log_var,
                "pred_xstart": pred_xstart,
                "eps": eps,
            }

    def p_sample(
        self,
        model_fn: ModelFn,
        xt: Tensor,
        t: Tensor,
        *,
        temperature: float = 1.0,
        clip_range: tuple[float, float] | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """One reverse step x_t → x_{t−1} = μ_θ + σ_t·τ·δ (no noise where t = 0) (§3.3).

        The temperature τ multiplies the noise standard deviation only (MAR / ADM temperature
        sampling); ``model_fn`` is called with the original indices ``timestep_map[t]``.

        Returns:
            dict with ``sample`` ``[M, C]`` float32 plus the :meth:`p_mean_variance` entries.
        """
        xt = xt.float()
        model_output = model_fn(xt, self._map(t))  # the network may run under the caller's autocast
        with torch.autocast(device_type=xt.device.type, enabled=False):
            out = self.p_mean_variance(model_output, xt, t, clip_range=clip_range)
            if noise is None:
                noise = randn_like(xt, generator)
            nonzero = (t != 0).float().reshape(-1, *([1] * (xt.dim() - 1)))
            sigma = torch.exp(0.5 * out["log_variance"])
            sample = out["mean"] + nonzero * sigma * float(temperature) * noise.float()
            out["sample"] = sample
            return out

    def p_sample_loop(
        self,
        model_fn: ModelFn,
        shape: Sequence[int],
        *,
        device: torch.device | str = "cpu",
        noise: Tensor | None = None,
        temperature: float = 1.0,
        clip_range: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Ancestral sampling over all steps of this diffusion, from x_T ~ N(0, I).

        x_T is *not* scaled by τ (MAR scales only the per-step noise).

        Returns:
            ``shape`` float32 on ``device`` (or ``noise``'s device).
        """
        if noise is None:
            x = randn(tuple(shape), generator=generator, device=torch.device(device))
        else:
            x = noise.float()
        if x.dim() != 2:  # the scalar fast path below is written for [M, C] tokens
            for i in reversed(range(self.num_timesteps)):
                t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
                x = self.p_sample(
                    model_fn, x, t, temperature=temperature, clip_range=clip_range, generator=generator
                )["sample"]
            return x
        # Same math and op order as p_sample, but every row shares the step, so the table
        # entries are float32 scalars (exactly the values _extract gathers) instead of [M, 1]
        # gathers, and the unused variance exp is skipped.
        tab = self._scalar_tables()
        m, c = x.shape
        tau = float(temperature)
        lo_hi = None if clip_range is None else (float(clip_range[0]), float(clip_range[1]))
        tmap = self.timestep_map.tolist()
        for i in reversed(range(self.num_timesteps)):
            t_model = torch.full((m,), tmap[i], dtype=torch.long, device=x.device)
            model_output = model_fn(x, t_model)
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = model_output.float()
                if out.shape[-1] == 2 * c:
                    eps, v = out[..., :c], out[..., c:]
                    frac = (v + 1.0) / 2.0
                    log_var = frac * tab["log_betas"][i] + (1.0 - frac) * tab["posterior_log_variance_clipped"][i]
                elif out.shape[-1] == c:
                    eps = out
                    log_var = x.new_full(x.shape, tab["fixed_large_log_variance"][i])
                else:
                    raise ValueError(f"model output has {out.shape[-1]} channels; expected {c} or {2 * c}")
                pred_xstart = tab["sqrt_recip_alphas_cumprod"][i] * x - tab["sqrt_recipm1_alphas_cumprod"][i] * eps
                if lo_hi is not None:
                    pred_xstart = pred_xstart.clamp(*lo_hi)
                mean = tab["posterior_mean_coef1"][i] * pred_xstart + tab["posterior_mean_coef2"][i] * x
                step_noise = randn_like(x, generator)
                sigma = torch.exp(0.5 * log_var)
                if i == 0:
                    sigma = sigma * 0.0
                x = mean + sigma * tau * step_noise
        return x

    def _scalar_tables(self) -> dict[str, list[float]]:
        """The sampling tables as Python floats holding their float32 values (cached)."""
        cached = getattr(self, "_scalar_cache", None)
        if cached is None:
            names = ("log_betas", "posterior_log_variance_clipped", "fixed_large_log_variance",
                     "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                     "posterior_mean_coef1", "posterior_mean_coef2")
            cached = {n: getattr(self, n).to(torch.float32).tolist() for n in names}
            self._scalar_cache = cached
        return cached

    # ------------------------------------------------------------------ training
    def vb_terms_bpd(
        self,
        model_output: Tensor,
        x0: Tensor,
        xt: Tensor,
        t: Tensor,
    ) -> Tensor:
        """Per-token VLB term in bits per channel, ``[M]`` float32.

        ``KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t))`` for t > 0 and the continuous decoder NLL
        ``−log N(x_0; μ_θ, Σ_θ)`` for t = 0 (see the module docstring), each averaged over channels
        and divided by ln 2.
        """
        with torch.autocast(device_type=xt.device.type, enabled=False):
            true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, xt, t)
            out = self.p_mean_variance(model_output, xt, t)
            mean, log_var = out["mean"], out["log_variance"]
            kl = _mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
            nll = -_mean_flat(gaussian_log_likelihood(x0.float(), mean, log_var)) / math.log(2.0)
            return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model_fn: ModelFn,
        x0: Tensor,
        t: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Per-token diffusion loss (Eq. 4 + ADM's learned-variance VLB), float32.

        Args:
            model_fn: see :data:`ModelFn` (called once on x_t).
            x0: ``[M, C]`` clean tokens; t: ``[M]`` long indices; noise: ``[M, C]`` ε (drawn if None).

        Returns:
            dict of ``[M]`` float32: ``mse`` = mean over channels of (ε − ε_θ)², ``vb`` = VLB term
            (0 when the model has no variance channels) computed with the predicted ε detached
            (ADM's ``frozen_out``: the VLB trains the variance only), ``loss`` = mse + vb.
        """
        with torch.autocast(device_type=x0.device.type, enabled=False):
            x0 = x0.float()
            if noise is None:
                noise = randn_like(x0, generator)
            noise = noise.float()
            xt = self.q_sample(x0, t, noise)
        model_output = model_fn(xt, self._map(t))
        with torch.autocast(device_type=x0.device.type, enabled=False):
            model_output = model_output.float()
            c = x0.shape[-1]
            eps = model_output[..., :c]
            mse = _mean_flat((noise - eps) ** 2)
            if model_output.shape[-1] == 2 * c:
                frozen = torch.cat([eps.detach(), model_output[..., c:]], dim=-1)
                vb = self.vb_terms_bpd(frozen, x0, xt, t)
            elif model_output.shape[-1] == c:
                vb = torch.zeros_like(mse)
            else:
                raise ValueError(
                    f"model output has {model_output.shape[-1]} channels; expected {c} or {2 * c}"
                )
            return {"loss": mse + vb, "mse": mse, "vb": vb}


# ---------------------------------------------------------------------- randomness helpers
def randn(shape: Sequence[int], *, generator: torch.Generator | RowStreams | None,
          device: torch.device) -> Tensor:
    """N(0, I) float32 on ``device``; drawn on the generator's device and moved if they differ.
    A :class:`~djepa.core.rng.RowStreams` draws each row's share from that row's generator."""
    if isinstance(generator, RowStreams):
        return generator.randn(shape, device)
    if generator is None:
        return torch.randn(tuple(shape), device=device)
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """:func:`randn` with ``x``'s shape and device."""
    return randn(x.shape, generator=generator, device=x.device)


def randint(high: int, size: int, *, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``[size]`` long uniform on ``{0, …, high−1}`` on ``device`` (generator-device aware)."""
    if generator is None:
        return torch.randint(0, high, (size,), device=device)
    return torch.randint(0, high, (size,), generator=generator, device=generator.device).to(device)


def rand(size: int, *, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``[size]`` float32 uniform on [0, 1) on ``device`` (generator-device aware)."""
    if generator is None:
        return torch.rand((size,), device=device)
    return torch.rand((size,), generator=generator, device=generator.device).to(device)
