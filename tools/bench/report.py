"""Collect ``docs/results/raw/*.json`` (written by the benchmarks) into the tables of
``docs/results/speed.md`` (between the ``<!-- tables -->`` markers), next to the reference.

    uv run python tools/bench/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

RAW = C.REPO / "docs" / "results" / "raw"
DOC = C.REPO / "docs" / "results" / "speed.md"
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"


def _load() -> list[dict]:
    out = []
    for p in sorted(RAW.glob("*.json")):
        d = json.loads(p.read_text())
        d["_file"] = p.name
        out.append(d)
    return out


def _load_str(d: dict) -> str:
    a, b = d.get("load_before"), d.get("load_after")
    return f"{a[0]:.1f} → {b[0]:.1f}" if a and b else "?"


def machine_factor(rows: list[dict]) -> tuple[float | None, str | None]:
    """Speed of this VM today relative to when the reference was timed: our fp32 EMA-target
    forward under glibc's default malloc (``calibration_*.json``: a plain fp32 ViT forward, the
    same ops and shapes as the reference's 167 ms "EMA target forward") divided by 167 ms.
    Below 1 = the machine is faster now; reference times are multiplied by it."""
    for d in rows:
        if d.get("benchmark") == "train_step" and d["_file"].startswith("calibration"):
            return d["results"]["ema_target_fwd_ms"] / C.REFERENCE_NUMBERS["train"]["ema_target_fwd_ms"], d["_file"]
    return None, None


def tables() -> str:
    rows = _load()
    ref = C.REFERENCE_NUMBERS
    factor, calib_file = machine_factor(rows)
    lines = ["### Training step (reference-tiny, batch 32, CPU)", "",
             "| run | threads | ms/step | samples/s | EMA-target fwd | forward | backward | optimizer + EMA | peak RSS MiB | achieved GFLOP/s | fraction of fp32 peak (peak measured) | load 1-min (before → after) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    r0 = ref["train"]
    lines.append(f"| **reference** (official code, fp32) | 2 | {r0['ms_per_step']:.0f} | {r0['samples_per_s']} | "
                 f"{r0['ema_target_fwd_ms']:.0f} | {r0['forward_ms']:.0f} | {r0['backward_ms']:.0f} | "
                 f"{r0['optimizer_ema_ms']:.0f} | – | {r0['peak_fraction'] * r0['fp32_peak_gflops']:.0f} | "
                 f"{r0['peak_fraction']:.2f} ({r0['fp32_peak_gflops']:.0f}) | quiet |")
    for d in rows:
        if d.get("benchmark") != "train_step" or d["_file"].startswith("calibration"):
            continue
        r = d["results"]
        name = f"djepa {d['precision']}" + (" compile" if d.get("compile") else "") + \
            ("" if d.get("adamw", "default") == "default" else f" AdamW {d['adamw']}") + \
            ("" if d.get("prediction_loss", True) else " without L_p (MAR)")
        pk = d["matmul_peak_gflops"]["fp32"]
        lines.append(f"| {name} (`{d['_file']}`) | {d['machine']['torch_threads']} | {r['ms_per_step']:.0f} | {r['samples_per_s']:.1f} | "
                     f"{r['ema_target_fwd_ms']:.0f} | {r['forward_ms']:.0f} | {r['backward_ms']:.0f} | "
                     f"{r['optimizer_ema_ms']:.0f} | {r['peak_mem_mib']:.0f} | {r['gflops_per_s']:.0f} | "
                     f"{r['peak_fraction_of_fp32']:.2f} ({pk:.0f}) | {_load_str(d)} |")
    if factor is not None:
        cal = next(d for d in rows if d["_file"] == calib_file)
        lines += ["", f"Machine factor (`{calib_file}`: fp32 EMA-target forward with glibc's default malloc "
                  f"{cal['results']['ema_target_fwd_ms']:.0f} ms vs the reference's 167 ms): **{factor:.2f}**. "
                  f"The reference adjusted to this machine today: {r0['ms_per_step'] * factor:.0f} ms/step, "
                  f"{r0['samples_per_s'] / factor:.1f} samples/s; sampling reference times × {factor:.2f} below."]
    lines += ["", "### Sampling, Algorithm 1 (reference-tiny, batch 16, K = 64, τ = 0.95, random weights, CPU; reference: 2 threads, quiet)", "",
              "| run | threads | head | S | cfg | precision | backbone | s/img | backbone s/img | denoising MLP s/img | reference s/img (same S) | time / reference (same S) | time / reference at S = 100 | same, machine-adjusted | peak RSS MiB | load 1-min (before → after) |",
              "|---|---:|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for d in rows:
        if d.get("benchmark") != "sample":
            continue
        r = d["results"]
        refv = d.get("reference_s_per_img")
        head = d["head"] + (f" {d['solver']}" if d["head"] == "flow" else " DDPM")
        tag = " (before this work)" if "before" in d["_file"] else ""
        ref100 = ref["sample"][(100, float(d["cfg"]))]
        compiled = "compiled" if r.get("compiled_backbone") else "eager"
        mem = r.get("peak_mem_mib")
        lines.append(f"| `{d['_file']}`{tag} | {d['machine']['torch_threads']} | {head} | {d['denoise_steps']} | {d['cfg']:g} | {d['precision']} | {compiled} | "
                     f"{r['s_per_img']:.3f} | {r['backbone_s_per_img']:.3f} | {r['head_s_per_img']:.3f} | "
                     f"{'–' if refv is None else format(refv, '.2f')} | "
                     f"{'–' if refv is None else format(r['s_per_img'] / refv, '.2f')} | "
                     f"{r['s_per_img'] / ref100:.2f} | "
                     f"{'–' if factor is None else format(r['s_per_img'] / (ref100 * factor), '.2f')} | "
                     f"{'–' if mem is None else format(mem, '.0f')} | {_load_str(d)} |")
    for d in rows:
        if d.get("benchmark") != "switches":
            continue
        lines += ["", f"### Switches (`{d['_file']}`)", ""]
        if d.get("note"):
            lines += [f"Note: {d['note']}.", ""]
        lines += ["| switch | variant | measured | value | unit | note | load |", "|---|---|---|---:|---|---|---:|"]
        for r in d["rows"]:
            v = "n/a" if r["value"] is None else f"{r['value']:.3f}" if r["value"] < 100 else f"{r['value']:.0f}"
            lines.append(f"| {r['switch']} | {r['variant']} | {r['what']} | {v} | {r['unit']} | {r['note']} | {r['load']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    text = DOC.read_text() if DOC.exists() else f"# Speed\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + BEGIN + "\n" + tables() + END + tail)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
