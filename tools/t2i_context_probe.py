"""Does a text-to-image run use its spatial context? (docs/results/t2i.md, "What was wrong")

For real scenes of the shapes set, mask ONE object token (every other token visible) and compare
the denoising MLP's data estimate E[x | z] (flow velocity at t = 0 from x_t = 0) with the true
token; then the same with every visible token replaced by background. A model that uses its
context predicts an interior token almost exactly from the real context and much worse from the
black one. Prints the two mean squared errors (token values in [-1, 1]).

    uv run python tools/t2i_context_probe.py runs/t2i            # the EMA weights (what samples use)
    uv run python tools/t2i_context_probe.py runs/t2i --raw      # the last checkpoint's raw weights

Flow-loss runs only (the t2i default).
"""

from __future__ import annotations

import argparse
import glob

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--raw", action="store_true", help="the last checkpoint's raw (non-EMA) weights")
    ap.add_argument("--scenes", type=int, default=10)
    a = ap.parse_args()
    from djepa.core.safe_load import torch_load
    from djepa.multimodal import shapes
    from djepa.multimodal.t2i_sample import load_t2i
    from djepa.multimodal.text_encoder import condition_for

    model, tok, enc, _ = load_t2i(a.run)
    if model.config.loss.kind != "flow":
        raise SystemExit("t2i_context_probe: flow-loss runs only")
    if a.raw:
        ck = sorted(glob.glob(f"{a.run}/checkpoints/step_*"))[-1]
        model.load_state_dict(torch_load(f"{ck}/mp_rank_00_model_states.pt")["module"])
    model.eval()
    ds = shapes.ShapesDataset(a.scenes, tok.image_size[0], seed=3)
    errs = {"real": [], "black": []}
    with torch.no_grad():
        for i in range(a.scenes):
            scene, cap = ds.item(i)
            x = tok.encode(shapes.render(scene.objects, tok.image_size[0])[None])
            n = x.shape[1]
            state = model.condition_state(condition_for(model, [cap], enc), 1)
            for j in (x[0] > -0.99).any(-1).nonzero().squeeze(-1).tolist()[:6]:
                vis = torch.tensor([[k for k in range(n) if k != j]])
                for name, ctx in (("real", x), ("black", torch.full_like(x, -1.0))):
                    z = model.features(ctx, state, vis, torch.tensor([[j]]))[0]
                    est = model.token_loss.net(torch.zeros(1, x.shape[2]), torch.zeros(1), z)[0]
                    errs[name].append(((est - x[0, j]) ** 2).mean().item())
    print(f"{a.run}{' (raw)' if a.raw else ''}: one object token masked, n={len(errs['real'])}: "
          f"MSE real context {sum(errs['real']) / len(errs['real']):.3f}, "
          f"black context {sum(errs['black']) / len(errs['black']):.3f}")


if __name__ == "__main__":
    main()
