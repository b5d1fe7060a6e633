"""The denoising MLP ε_θ / v_θ of D-JEPA (§3.3, App. B), MAR's ``SimpleMLPAdaLN``.

A per-token network: the noisy token ``x`` ([M, C]) is projected to width W; the condition is
the sum of a timestep embedding (256-dim sinusoid → Linear-SiLU-Linear, as ADM/DiT) and a
linear embedding of the predicted feature ``z`` ([M, D_z]); ``depth`` residual blocks of
LN → AdaLN modulation → Linear-SiLU-Linear → gated residual; a final non-affine LN, AdaLN and
a Linear to ``out_channels`` (2·C for diffusion with learned Σ, C for flow matching).

Source: Li et al. 2024 (MAR, ``models/diffloss.py``), followed by the paper ("follows the
implementation described in Li et al. (2024)", App. B). Submodule names match MAR's so that
its ``net.*`` weights load without renaming; the parameter count equals MAR's exactly
(B: in 16, z 768, W 1024, depth 6, out 32 → 35,749,920).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PLAN_MEMORY_BUDGET", "DenoisingMLP", "SamplingPlan", "TimestepEmbedder", "timestep_embedding", "modulate"]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """AdaLN modulation ``x·(1 + scale) + shift`` (DiT / MAR); all ``[M, W]``."""
    return x * (1 + scale) + shift


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (ADM / DiT / MAR).

    Args:
        t: ``[M]`` timesteps, float or integer (diffusion indices 0..999; flow matching feeds
            ``1000·t``).
        dim: embedding size (256 in MAR).
        max_period: lowest frequency's period.

    Returns:
        ``[M, dim]`` float32, ``[cos(t·f_k), sin(t·f_k)]`` with ``f_k = max_period^(−k/half)``
        (cosines first, as in MAR); an odd ``dim`` gets a zero last column.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.reshape(-1, 1).float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Timestep → ``[M, W]``: sinusoid of size ``frequency_embedding_size`` → Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: Tensor) -> Tensor:
        """``t``: ``[M]`` float or long → ``[M, W]`` in the parameters' dtype (autocast aside)."""
        t_freq = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """``x + gate · MLP(modulate(LN(x), shift, scale))`` with (shift, scale, gate) = AdaLN(y)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.in_ln = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels, bias=True),
            nn.SiLU(),
            nn.Linear(channels, channels, bias=True),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels, bias=True))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.apply_modulation(x, self.adaLN_modulation(y))

    def apply_modulation(self, x: Tensor, mod: Tensor) -> Tensor:
        """The block given its AdaLN output ``mod = adaLN_modulation(y)``: ``[M, 3W]``."""
        shift, scale, gate = mod.chunk(3, dim=-1)
        h = modulate(self.in_ln(x), shift, scale)
        return x + gate * self.mlp(h)


class FinalLayer(nn.Module):
    """Non-affine LN → AdaLN (shift, scale) → Linear(W → out_channels)."""

    def __init__(self, model_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(model_channels, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(model_channels, out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(model_channels, 2 * model_channels, bias=True)
        )

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.apply_modulation(x, self.adaLN_modulation(c))

    def apply_modulation(self, x: Tensor, mod: Tensor) -> Tensor:
        """The layer given its AdaLN output ``mod = adaLN_modulation(c)``: ``[M, 2W]``."""
        shift, scale = mod.chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


#: Default memory budget (bytes) of the AdaLN modulations a :class:`SamplingPlan` precomputes
#: at once: 64 MiB covers every step of a CPU-sized head in one matmul and a few steps of a
#: B/L/H head on a GPU.
PLAN_MEMORY_BUDGET = 64 * 2**20


@dataclass(frozen=True)
class SamplingPlan:
    """Work of :class:`DenoisingMLP` that is constant over one sampler call (§3.5 / App. F:
    the same ``z`` at every denoising step, timesteps from a known finite set).

    Built by :meth:`DenoisingMLP.sampling_plan` and passed to ``forward(..., plan=plan)``. The
    AdaLN modulation of every block and of the final layer, ``Linear(SiLU(t_embed(t) + cond(z)))``,
    depends only on ``z`` and ``t``, both known before the first step, so the plan computes it
    for a chunk of timesteps ``[T_c, M, F]`` at once — one large matmul instead of one small,
    memory-bound ``[M, W] × [W, F]`` per step — and ``forward`` only gathers its rows. Chunks are
    sized to ``memory_budget`` bytes and computed when a step first needs them (samplers walk
    the timesteps in order, so each chunk is computed once). Same math as the plain forward
    (equal up to float rounding of the reordered matmuls).

    Attributes:
        z: the ``[M, D_z]`` features the plan was built for (``forward`` checks identity).
        t_values: ``[S]`` float32 ascending timesteps the plan covers.
        t_embed: ``[S, W]`` ``time_embed(t_values)``.
        cond: ``[M, W]`` ``cond_embed(z)``.
        ada_weight / ada_bias: all AdaLN modulation Linears stacked (blocks, then final layer):
            ``[F, W]`` / ``[F]`` with ``F = (3·depth + 2)·W``, in the compute dtype.
        chunk: timesteps per precomputed chunk (``>= 1``).
        cache: chunk index → ``[T_c, M, F]`` modulations (filled lazily; the last one only).
        linears: ``(weight, bias)`` of every per-step Linear (input projection, the blocks' two
            MLP layers, the final layer) already in the compute dtype: under autocast they are
            cast once per plan instead of at every step (autocast does not cache casts of
            weights that do not require grad; same values, so same results).
    """

    z: Tensor
    t_values: Tensor
    t_embed: Tensor
    cond: Tensor
    ada_weight: Tensor
    ada_bias: Tensor
    chunk: int = 1
    cache: dict = field(default_factory=dict)
    linears: tuple = ()

    def modulations(self, idx: Tensor) -> Tensor:
        """``[M, F]`` AdaLN modulations for row ``r`` at timestep ``t_values[idx[r]]``.

        ``idx``: ``[M]`` long indices into ``t_values``. Rows of one call may use different
        timesteps. Precomputed chunks are used when one chunk holds every timestep (no host
        sync anywhere) or, on CPU, when the rows fall in one chunk; otherwise (one-step chunks,
        rows straddling chunks, partial chunks on an accelerator) the rows are computed directly,
        as the plain forward does. Memory: the chunk plus its ``[T_c, M, W]`` SiLU input.
        """
        m = self.cond.shape[0]
        if self.chunk >= len(self.t_values) or not idx.numel():
            c0 = 0  # one chunk holds every timestep: no host sync (GPU) to find it
        elif self.chunk == 1 or idx.device.type != "cpu":
            # finding the chunk would cost a device→host sync per step on accelerators (and a
            # one-step chunk saves nothing): compute this step's rows directly
            y = self.t_embed.index_select(0, idx) + self.cond
            return F.linear(F.silu(y), self.ada_weight, self.ada_bias)
        else:
            lo, hi = (int(v) for v in torch.aminmax(idx))
            c0 = lo // self.chunk
            if hi // self.chunk != c0:  # rows straddle chunks: compute them directly
                y = self.t_embed.index_select(0, idx) + self.cond
                return F.linear(F.silu(y), self.ada_weight, self.ada_bias)
        block = self.cache.get(c0)
        if block is None:
            self.cache.clear()  # keep one chunk: memory stays within the budget
            t_emb = self.t_embed[c0 * self.chunk:(c0 + 1) * self.chunk]  # [T_c, W]
            y = t_emb[:, None, :] + self.cond[None]  # [T_c, M, W]
            block = F.linear(F.silu(y), self.ada_weight, self.ada_bias)  # [T_c, M, F]
            self.cache[c0] = block
        flat = (idx - c0 * self.chunk) * m + torch.arange(m, device=idx.device)
        return block.reshape(-1, block.shape[-1]).index_select(0, flat)


class DenoisingMLP(nn.Module):
    """ε_θ(x_t | t, z) / v_θ(x_t | t, z): MAR's SimpleMLPAdaLN (§3.3, App. B).

    Args:
        in_channels: token channels C.
        z_channels: channels D_z of the conditioning feature z (the predictor's width).
        width: hidden width W (B 1024, L 1280, H 1536).
        depth: number of residual blocks (B 6, L 8, H 12).
        out_channels: 2·C (diffusion with learned Σ: ``[ε, v]``) or C (ε only / velocity).

    Init (MAR): xavier-uniform Linear weights, zero biases; the timestep MLP's weights
    N(0, 0.02); every AdaLN modulation Linear and the final Linear are zero, so the network
    outputs exactly 0 at initialisation.
    """

    def __init__(
        self, in_channels: int, z_channels: int, width: int, depth: int, out_channels: int
    ) -> None:
        super().__init__()
        if min(in_channels, z_channels, width, out_channels) < 1 or depth < 0:
            raise ValueError(
                "DenoisingMLP needs positive channel sizes and depth >= 0, got "
                f"in={in_channels}, z={z_channels}, width={width}, depth={depth}, out={out_channels}"
            )
        self.in_channels = in_channels
        self.z_channels = z_channels
        self.model_channels = width
        self.out_channels = out_channels
        self.num_res_blocks = depth

        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList([ResBlock(width) for _ in range(depth)])
        self.final_layer = FinalLayer(width, out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """MAR's init (see the class docstring); safe on the meta device."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for block in self.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    @torch.no_grad()
    def sampling_plan(self, z: Tensor, timesteps: Tensor, *,
                      memory_budget: int = PLAN_MEMORY_BUDGET) -> SamplingPlan:
        """Precompute the step-independent work for a sampler that calls ``forward(x, t, z,
        plan=plan)`` with this exact ``z`` and every ``t`` in ``timesteps`` (inference only:
        no gradient flows through the plan). Build it under the autocast state of the calls.

        Args:
            z: ``[M, D_z]`` conditioning features.
            timesteps: the timesteps the sampler will pass (any shape; long indices or float,
                e.g. the respaced ``timestep_map`` or ``1000·time_grid``).
            memory_budget: bytes of AdaLN modulations held at once (``[T_c, M, F]`` chunks);
                at least one timestep's worth is always used.
        """
        dtype = self.input_proj.weight.dtype
        t_values = torch.unique(timesteps.detach().reshape(-1).float())  # sorted ascending
        t_embed = self.time_embed(t_values)
        cond = self.cond_embed(z.to(dtype))
        ada = [b.adaLN_modulation[-1] for b in self.res_blocks] + [self.final_layer.adaLN_modulation[-1]]
        weight = torch.cat([m.weight for m in ada], dim=0)
        bias = torch.cat([m.bias for m in ada], dim=0)
        dev = weight.device.type
        if torch.is_autocast_enabled(dev):  # cast once here, not at every step
            weight = weight.to(torch.get_autocast_dtype(dev))
            bias = bias.to(weight.dtype)
            t_embed, cond = t_embed.to(weight.dtype), cond.to(weight.dtype)
        per_step = max(1, z.shape[0] * weight.shape[0] * weight.element_size())
        chunk = max(1, min(len(t_values), int(memory_budget) // per_step))
        mods = [self.input_proj] + [m for b in self.res_blocks for m in (b.mlp[0], b.mlp[2])] \
            + [self.final_layer.linear]
        linears = tuple((m.weight.to(weight.dtype), m.bias.to(weight.dtype)) for m in mods)
        return SamplingPlan(z, t_values, t_embed, cond, weight, bias, chunk, linears=linears)

    def forward(self, x: Tensor, t: Tensor, z: Tensor, *, plan: SamplingPlan | None = None) -> Tensor:
        """Predict ε (and the variance interpolation v) or the velocity for each token.

        Args:
            x: ``[M, C]`` noisy tokens (float).
            t: ``[M]`` timesteps, long indices or float (flow matching: ``1000·t``).
            z: ``[M, D_z]`` conditioning features.
            plan: optional :meth:`sampling_plan` built for this ``z`` (inference fast path);
                every ``t`` must be one of its timesteps.

        Returns:
            ``[M, out_channels]`` in the parameters' dtype (or the autocast dtype).

        Raises:
            ValueError: mismatched shapes, or a plan built for another ``z``.
        """
        if plan is not None:
            return self._forward_planned(x, t, z, plan)
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [M, {self.in_channels}], got {tuple(x.shape)}")
        if z.dim() != 2 or z.shape[1] != self.z_channels or z.shape[0] != x.shape[0]:
            raise ValueError(f"z must be [{x.shape[0]}, {self.z_channels}], got {tuple(z.shape)}")
        if t.reshape(-1).shape[0] != x.shape[0]:
            raise ValueError(f"t must have {x.shape[0]} entries, got {tuple(t.shape)}")
        dtype = self.input_proj.weight.dtype
        h = self.input_proj(x.to(dtype))
        y = self.time_embed(t.reshape(-1)) + self.cond_embed(z.to(dtype))
        for block in self.res_blocks:
            h = block(h, y)
        return self.final_layer(h, y)

    def _forward_planned(self, x: Tensor, t: Tensor, z: Tensor, plan: SamplingPlan) -> Tensor:
        if z is not plan.z:
            raise ValueError("this SamplingPlan was built for another z")
        if x.dim() != 2 or x.shape[1] != self.in_channels or x.shape[0] != z.shape[0]:
            raise ValueError(f"x must be [{z.shape[0]}, {self.in_channels}], got {tuple(x.shape)}")
        idx = torch.searchsorted(plan.t_values, t.reshape(-1).float())
        lin = plan.linears
        h = F.linear(x.to(self.input_proj.weight.dtype), *lin[0])
        mods = plan.modulations(idx)
        w = self.model_channels
        for i, block in enumerate(self.res_blocks):  # ResBlock.apply_modulation, precast weights
            shift, scale, gate = mods[:, 3 * w * i:3 * w * (i + 1)].chunk(3, dim=-1)
            u = modulate(block.in_ln(h), shift, scale)
            h = h + gate * F.linear(F.silu(F.linear(u, *lin[1 + 2 * i])), *lin[2 + 2 * i])
        shift, scale = mods[:, 3 * w * len(self.res_blocks):].chunk(2, dim=-1)
        return F.linear(modulate(self.final_layer.norm_final(h), shift, scale), *lin[-1])
