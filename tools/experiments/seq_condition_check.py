"""Learning check of the sequence condition (issue 11): the smallest proof that conditioning
through joint attention works before speech and text depend on it.

Task: a random condition sequence of ``L_b`` symbols (4 … 8 per row, one-hot, padded) and
target tokens ``x_i = code[s_i]`` — a fixed continuous code (a distinct ±1 vector of 4 channels)
of condition symbol i. The model must align token i to condition symbol i: nothing but the
joint attention carries the symbols (no class vector, buffer tokens carry none). A tiny 1-D
D-JEPA (width 64, depth 2, RoPE, all blocks joint, diffusion + prediction loss with an EMA
target encoder) is trained on CPU, then new condition sequences are sampled with Algorithm 1
(per-row streams, rows of different length in one batch) and each sampled token is decoded to
the nearest code. Pass: ≥ 95 % of the sampled tokens decode to their condition symbol.

    uv run python tools/experiments/seq_condition_check.py            # prints the accuracy
    uv run pytest -m slow tests/core/test_seq_condition_learning.py   # the same, as a test
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from djepa.core.batch import TokenBatch
from djepa.core.condition import SequenceInput
from djepa.core.config import SamplerConfig, preset
from djepa.core.ema import EMA
from djepa.core.model import DJEPA
from djepa.core.rng import row_generators
from djepa.core.sampler import generate

VOCAB, MAX_LEN, MIN_LEN, TOKEN_DIM = 8, 8, 4, 4


def codes() -> torch.Tensor:
    """``[VOCAB, TOKEN_DIM]`` distinct ±1 vectors (symbol s ↦ the binary digits of a fixed
    permutation of 0 … 15, as signs)."""
    ids = torch.tensor([3, 12, 5, 10, 6, 9, 0, 15])
    bits = (ids[:, None] >> torch.arange(TOKEN_DIM)) & 1
    return bits.float() * 2 - 1


def make_batch(n: int, g: torch.Generator) -> tuple[TokenBatch, SequenceInput, torch.Tensor]:
    """``n`` rows: symbols ``[n, MAX_LEN]`` (−1 at padding), their token batch and condition."""
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (n,), generator=g)
    sym = torch.randint(0, VOCAB, (n, MAX_LEN), generator=g)
    pad = torch.arange(MAX_LEN)[None] >= lengths[:, None]
    sym = sym.masked_fill(pad, -1)
    tokens = codes()[sym.clamp(min=0)].masked_fill(pad[..., None], 0.0)
    onehot = torch.nn.functional.one_hot(sym.clamp(min=0), VOCAB).float().masked_fill(pad[..., None], 0.0)
    return TokenBatch.from_lengths(tokens, lengths), SequenceInput(onehot, pad), sym


def build_model(seed: int) -> DJEPA:
    torch.manual_seed(seed)
    return DJEPA(preset(
        "tiny", token_dim=TOKEN_DIM, grid=(MAX_LEN,), pos_embed="rope", condition="sequence",
        condition_dim=VOCAB, joint_depth=None, buffer_size=1, label_drop_prob=0.1,
        loss=dict(mlp_width=64, mlp_depth=2)))


def run(steps: int = 400, batch_size: int = 64, lr: float = 2e-3, num_eval: int = 256, seed: int = 0,
        ar_steps: int = 8, denoise_steps: int = 25, cfg: float = 1.0, threads: int = 1) -> dict:
    torch.set_num_threads(threads)  # 1: tiny ops; more threads only contend on a shared CPU
    model = build_model(seed)
    ema = EMA(model, decay=0.995, warmup=100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 1)
    step_gen = torch.Generator().manual_seed(seed + 2)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        batch, cond, _ = make_batch(batch_size, g)
        out = model(batch, cond, target_model=ema.module, generator=step_gen)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        ema.update(model)
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {float(out.loss.detach()):.4f}  token {float(out.token_loss):.4f}  "
                  f"prediction {float(out.prediction_loss):.4f}", flush=True)
    train_s = time.perf_counter() - t0

    batch, cond, sym = make_batch(num_eval, torch.Generator().manual_seed(seed + 3))
    empty = TokenBatch(torch.zeros_like(batch.tokens), batch.positions, batch.padding, batch.valid)
    t1 = time.perf_counter()
    sampled = generate(ema.module, cond, SamplerConfig(num_ar_steps=ar_steps, num_denoise_steps=denoise_steps,
                                                       cfg_scale=cfg),
                       batch=empty, generators=row_generators(range(num_eval)), clip_range=(-1.0, 1.0))
    sample_s = time.perf_counter() - t1
    decoded = torch.cdist(sampled, codes()).argmin(-1)
    real = sym >= 0
    acc = float((decoded[real] == sym[real]).float().mean())
    # control: the same sampler without the condition (null sequence) — should be near chance
    null = generate(ema.module, None, SamplerConfig(num_ar_steps=ar_steps, num_denoise_steps=denoise_steps),
                    batch=empty, generators=row_generators(range(num_eval)), clip_range=(-1.0, 1.0))
    acc_null = float((torch.cdist(null, codes()).argmin(-1)[real] == sym[real]).float().mean())
    result = dict(accuracy=acc, accuracy_without_condition=acc_null, chance=1 / VOCAB, tokens=int(real.sum()),
                  rows=num_eval, steps=steps, batch_size=batch_size, train_seconds=round(train_s, 1),
                  sample_seconds=round(sample_s, 1))
    print(f"seq-condition check: {100 * acc:.2f} % of {int(real.sum())} sampled tokens decode to their "
          f"condition symbol (without the condition: {100 * acc_null:.1f} %, chance {100 / VOCAB:.1f} %); "
          f"train {train_s:.1f} s, sample {sample_s:.1f} s")
    print(json.dumps(result))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--num-eval", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    res = run(a.steps, a.batch_size, a.lr, a.num_eval, a.seed, cfg=a.cfg, threads=a.threads)
    raise SystemExit(0 if res["accuracy"] >= 0.95 else 1)


if __name__ == "__main__":
    main()
