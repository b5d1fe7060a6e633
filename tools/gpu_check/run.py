"""GPU readiness check (issue 18): every CUDA path of djepa in one short run.

    tools/gpu_check.sh [--out DIR] [--budget-s 480] [--only a,b] [--keep-work]
    tools/gpu_check.sh --dry-run            # the same checks on the CPU at toy sizes

Checks (``checks.py``, in this order): environment; CUDA-vs-CPU equality of the SDPA and
xformers attention kernels (no mask, key padding, block-causal, per-batch boolean masks), a
training step (fp32, bf16 autocast), a sequence-conditioned training step through joint blocks
on a ragged batch (fp32, bf16), activation checkpointing against the plain gradients, Algorithm 1
with a fixed seed and with per-row generators (batched = each row alone), ``from_pretrained`` of
a CPU export, fused AdamW; the DeepSpeed engine on one GPU (NCCL,
ZeRO 1 and 2, bf16, checkpoint, exact resume); the modality CLIs on their tiny configurations;
the GPU speed rows (B preset at the paper's Table 4 settings; training step; torch.compile
rows when the budget allows).

How it runs: the checks run one after another in a worker process; this process watches it,
kills it when a check passes its timeout (or the whole budget runs out) and starts a fresh one
for the remaining checks; on CUDA a failed check also gets a fresh worker (a CUDA error can
poison the context). The CLIs and their DeepSpeed runs are subprocesses of the worker. Results
go to ``DIR/gpu_check.json`` (rewritten after every check, so a killed run keeps what it had)
and ``DIR/gpu_check.md``; each failed check prints one ``FAIL name: …`` line, and the exit
status is 1 when any check failed (0 otherwise). Without CUDA and without ``--dry-run`` it
prints one line and exits 0, running nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_BUDGET_S = 480.0  # 8 minutes
GRACE_S = 5.0


# ------------------------------------------------------------------------------ output
def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown(report: dict) -> str:
    """The short table: one row per check, then the speed rows next to the paper's figures."""
    m = report["meta"]
    lines = [f"# gpu_check ({'dry run on CPU' if m['dry_run'] else m.get('gpu') or m['device']})", "",
             f"{m['started_utc']}, {m['wall_s']:.0f} s of a {m['budget_s']:.0f} s budget; "
             f"{m['counts']}", ""]
    if m["dry_run"]:
        lines += ["Dry run: the CPU stands in for CUDA (device-vs-CPU comparisons are CPU against "
                  "CPU; attention is against float64), toy sizes instead of the B preset.", ""]
    lines += ["| check | status | s | result |", "| --- | --- | ---: | --- |"]
    for r in report["checks"]:
        summary = str(r.get("summary", "")).replace("|", "/")
        lines.append(f"| {r['name']} | {r['status']} | {_fmt(r.get('seconds'))} | {summary} |")
    speed = [r for r in report["checks"] if r["name"].startswith("speed_") and r["status"] == "pass"]
    samp = [r for r in speed if "s_per_img" in r.get("details", {})]
    if samp:
        lines += ["", "| sampling (random weights, bf16) | s/img | paper H800 s/img | ours / paper | peak MiB |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for r in samp:
            d = r["details"]
            label = (f"{d['preset']} batch {d['batch']} K={d['ar_steps']} S={d['denoise_steps']} "
                     f"cfg {d['cfg']}{' compiled' if d.get('compiled') else ''}")
            lines.append(f"| {label} | {_fmt(d['s_per_img'])} | {_fmt(d['paper_h800_s_per_img'])} | "
                         f"{_fmt(d['ratio_to_paper'])} | {_fmt(d['peak_mem_mib'])} |")
    tr = [r for r in speed if "ms_per_step" in r.get("details", {})]
    if tr:
        lines += ["", "| training step (bf16) | ms/step | samples/s | peak MiB |", "| --- | ---: | ---: | ---: |"]
        for r in tr:
            d = r["details"]
            label = f"{d['preset']} batch {d['batch']}{' compiled' if d.get('compiled') else ''}"
            lines.append(f"| {label} | {_fmt(d['ms_per_step'])} | {_fmt(d['samples_per_s'])} | "
                         f"{_fmt(d['peak_mem_mib'])} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ worker
def worker(args: argparse.Namespace) -> int:
    """Run ``args.checks`` in order, appending start / end events to ``args.results``."""
    import gc

    import torch

    import checks as C

    device = torch.device("cpu" if args.dry_run else "cuda")
    out = Path(args.out)
    ctx = C.Context(device=device, dry_run=args.dry_run, work=out / "work", logs=out / "logs",
                    deadline=0.0)
    ctx.work.mkdir(parents=True, exist_ok=True)
    events = open(args.results, "a", buffering=1)

    def emit(**e: Any) -> None:
        events.write(json.dumps(_jsonable(e)) + "\n")
        events.flush()

    skip = set(filter(None, (args.skip or "").split(",")))
    for name in args.checks.split(","):
        check = C.BY_NAME[name]
        left = args.budget_end - time.time()
        if name in skip:
            emit(event="end", name=name, status="skipped", seconds=0.0, summary="skipped by --skip")
            continue
        if check.optional and left < check.timeout_s:
            emit(event="end", name=name, status="skipped", seconds=0.0,
                 summary=f"optional; {left:.0f} s of the budget left, needs up to {check.timeout_s:.0f} s")
            continue
        if left < 10:
            emit(event="end", name=name, status="fail", seconds=0.0,
                 summary=f"not run: time budget exhausted ({left:.0f} s left)")
            continue
        ctx.deadline = time.time() + min(check.timeout_s, args.max_check_s or math.inf, left)
        emit(event="start", name=name, deadline=ctx.deadline)
        print(f"=== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            res = check.fn(ctx)
        except Exception as e:  # the check failed; record it and go on
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            res = {"status": "fail", "summary": f"{type(e).__name__}: {msg}",
                   "details": {"traceback": traceback.format_exc()[-4000:]}}
            traceback.print_exc()
        res["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"--- {name}: {res['status']} {res['summary']}", flush=True)
        emit(event="end", name=name, **res)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            if res["status"] == "fail":
                return 3  # a fresh process for the rest (a CUDA error can poison the context)
    return 0


# ------------------------------------------------------------------------------ orchestrator
def _worker_env(dry_run: bool) -> dict[str, str]:
    """One-process environment as the engine expects it without a launcher (no inherited RANK /
    WORLD_SIZE, MASTER_ADDR=127.0.0.1, no MASTER_PORT: the engine takes a free one when it
    starts; ``DS_ACCELERATOR=cpu`` in the dry run), deterministic cuBLAS workspaces for the
    exact-resume check."""
    sys.path.insert(0, str(HERE))
    from checks import cli_env

    env = cli_env(dry_run)
    # the engine picks a free port when it starts (djepa.core.train.distributed): a port chosen
    # here could be taken by another process before the worker reaches the engine check
    env.pop("MASTER_PORT", None)
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if dry_run and "TORCH_EXTENSIONS_DIR" not in os.environ:
        env["TORCH_EXTENSIONS_DIR"] = str(PRIVATE_EXTENSIONS)
    return env


#: DeepSpeed JIT-builds its CPU shared-memory op (``deepspeed_shm_comm``) under a file lock that
#: a killed process never releases (torch's ``FileBaton``), after which every DeepSpeed-on-CPU
#: start waits forever. The dry run therefore builds into a folder of its own, where the
#: locks left by a check this runner killed can be removed safely.
PRIVATE_EXTENSIONS = REPO / "runs" / ".gpu_check_torch_extensions"


def _remove_stale_locks(env: dict[str, str]) -> None:
    root = Path(env.get("TORCH_EXTENSIONS_DIR", ""))
    if root == PRIVATE_EXTENSIONS and root.is_dir():
        for lock in root.glob("**/lock"):
            lock.unlink(missing_ok=True)
            print(f"gpu_check: removed {lock} (left by a killed check)", flush=True)


def _default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check"
    return REPO / "runs" / "gpu_check" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def orchestrate(args: argparse.Namespace) -> int:
    import torch

    if args.list:
        sys.path.insert(0, str(HERE))
        import checks as C

        for c in C.CHECKS:
            print(f"{c.name}\t{c.timeout_s:.0f} s{' (optional)' if c.optional else ''}\t{c.what}")
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing run "
              "(tools/gpu_check.sh --dry-run runs the checks on the CPU at toy sizes)")
        return 0
    sys.path.insert(0, str(HERE))
    import checks as C

    names = [c.name for c in C.CHECKS]
    for flag in (args.only, args.skip):
        unknown = sorted(set(filter(None, (flag or "").split(","))) - set(names))
        if unknown:
            print(f"gpu_check: error: unknown check(s) {unknown}; known: {', '.join(names)}", file=sys.stderr)
            return 2
    if args.only:  # in the order given
        names = list(dict.fromkeys(filter(None, args.only.split(","))))
    out = Path(args.out) if args.out else _default_out()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    results_file = out / "logs" / "events.jsonl"
    results_file.write_text("")
    t_start = time.time()
    budget_end = t_start + args.budget_s
    meta: dict[str, Any] = {"dry_run": args.dry_run, "device": "cpu" if args.dry_run else "cuda",
                            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t_start)),
                            "budget_s": args.budget_s, "out": str(out), "argv": sys.argv[1:]}
    results: dict[str, dict] = {}
    env = _worker_env(args.dry_run)
    _remove_stale_locks(env)  # one gpu_check at a time per checkout
    n_read = 0
    launches = 0

    def write_report() -> dict:
        rows = [dict(name=n, **results[n]) for n in names if n in results]
        rows += [dict(name=n, status="fail", summary="not reached", seconds=None)
                 for n in names if n not in results]
        counts = {s: sum(r["status"] == s for r in rows) for s in ("pass", "fail", "skipped")}
        meta.update(wall_s=time.time() - t_start, counts=counts, worker_launches=launches,
                    gpu=results.get("environment", {}).get("details", {}).get("gpu"))
        report = {"meta": meta, "checks": rows}
        (out / "gpu_check.json").write_text(json.dumps(_jsonable(report), indent=2) + "\n")
        (out / "gpu_check.md").write_text(markdown(report))
        return report

    while any(n not in results for n in names):
        pending = [n for n in names if n not in results]
        launches += 1
        log = open(out / "logs" / f"worker_{launches}.log", "w")
        cmd = [sys.executable, str(HERE / "run.py"), "--worker", "--out", str(out),
               "--results", str(results_file), "--checks", ",".join(pending),
               "--budget-end", repr(budget_end), "--skip", args.skip or "",
               "--max-check-s", repr(args.max_check_s or 0.0)] \
            + (["--dry-run"] if args.dry_run else [])
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
        current: tuple[str, float] | None = None
        killed = None
        done_before = len(results)
        while True:
            rc = proc.poll()
            with open(results_file) as f:
                lines = f.read().split("\n")[:-1]  # complete lines only
            for line in lines[n_read:]:
                e = json.loads(line)
                if e.pop("event") == "start":
                    current = (e["name"], float(e["deadline"]))
                else:
                    name = e.pop("name")
                    results[name] = e
                    current = None
                    if e["status"] == "fail":
                        print(f"FAIL {name}: {e['summary']}", flush=True)
                    write_report()
            n_read = len(lines)
            if rc is not None:
                break
            now = time.time()
            if current is not None and now > current[1] + GRACE_S:
                limit = min(C.BY_NAME[current[0]].timeout_s, args.max_check_s or math.inf)
                killed = f"timed out (limit {limit:.0f} s, or the budget's end if sooner)"
            elif now > budget_end + 2 * GRACE_S:
                killed = "killed at the end of the time budget"
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _remove_stale_locks(env)
                break
            time.sleep(0.2)
        log.close()
        if current is not None and current[0] not in results:
            why = killed or f"worker process died (exit status {proc.returncode}) during the check"
            results[current[0]] = {"status": "fail", "summary": why + f"; log {log.name}",
                                   "seconds": None, "details": {}}
            print(f"FAIL {current[0]}: {results[current[0]]['summary']}", flush=True)
            write_report()
        elif len(results) == done_before and any(n not in results for n in names):
            # the worker ended without a result: count it against the next check (no spinning)
            nxt = next(n for n in names if n not in results)
            results[nxt] = {"status": "fail", "seconds": None, "details": {},
                            "summary": f"worker exited with status {rc} before the check; log {log.name}"}
            print(f"FAIL {nxt}: {results[nxt]['summary']}", flush=True)
            write_report()
        if killed and time.time() > budget_end:
            for n in names:
                if n not in results:
                    opt = C.BY_NAME[n].optional
                    results[n] = {"status": "skipped" if opt else "fail", "seconds": 0.0, "details": {},
                                  "summary": ("optional; " if opt else "not run: ") + "time budget exhausted"}
    report = write_report()
    if not args.keep_work and report["meta"]["counts"]["fail"] == 0:
        import shutil

        shutil.rmtree(out / "work", ignore_errors=True)
    print(markdown(report), end="")
    print(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    failed = [r["name"] for r in report["checks"] if r["status"] == "fail"]
    if failed:
        print(f"gpu_check: {len(failed)} check(s) FAILED: {', '.join(failed)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="run the checks on the CPU at toy sizes")
    ap.add_argument("--list", action="store_true", help="list the checks (name, timeout, what) and exit")
    ap.add_argument("--out", default=None, help="output folder (default $OUT/gpu_check or runs/gpu_check/<time>)")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time budget of the whole run")
    ap.add_argument("--only", default=None,
                    help="comma-separated check names, run in this order (default: all)")
    ap.add_argument("--max-check-s", type=float, default=None,
                    help="cap on every check's own timeout (seconds)")
    ap.add_argument("--skip", default=None,
                    help="comma-separated check names listed as skipped without running them")
    ap.add_argument("--keep-work", action="store_true", help="keep OUT/work (runs, checkpoints) on success")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--results", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--checks", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--budget-end", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    return orchestrate(args)


if __name__ == "__main__":
    raise SystemExit(main())
