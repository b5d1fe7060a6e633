"""Two CPU processes (gloo, ZeRO-2) must follow one process with twice the micro-batch.

The 2-rank run is started from the test with ``torchrun`` on a free port; the 1-rank reference
runs in this process. ``python -m djepa.core.train.selftest`` is the job in both (deterministic
toy model with the D-JEPA contract: batch-mean losses, no internal randomness).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from djepa.core.train.distributed import free_port
from djepa.core.train.selftest import main as selftest_main

ARGS = ["--steps", "6", "--zero-stage", "2", "--precision", "fp32", "--dataset-size", "32",
        "--lr", "3e-3", "--log-every", "3"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _final_ema(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "checkpoints" / "step_00000006" / "ema.safetensors")


def test_two_ranks_zero2_match_one_rank_with_double_micro_batch(tmp_path):
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "djepa.core.train.selftest", "--output-dir", str(two), "--micro-batch", "4",
           "--losses-json", str(tmp_path / "two.json"), *ARGS]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    # 1-rank reference in this process while the 2-rank job runs.
    selftest_main(["--output-dir", str(tmp_path / "one"), "--micro-batch", "8",
                   "--losses-json", str(tmp_path / "one.json"), *ARGS])
    try:
        log, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail("2-process run timed out:\n" + log[-3000:])
    assert proc.returncode == 0, log[-3000:]
    assert "done: step 6 finished=True" in log
    one = json.loads((tmp_path / "one.json").read_text())
    two_l = json.loads((tmp_path / "two.json").read_text())
    assert len(one) == len(two_l) == 6
    for a, b in zip(one, two_l):
        for k in ("loss", "token_loss", "prediction_loss"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (k, one, two_l)
    assert one[-1]["loss"] < one[0]["loss"]
    e1, e2 = _final_ema(tmp_path / "one"), _final_ema(two)
    assert e1.keys() == e2.keys()
    for k in e1:
        torch.testing.assert_close(e2[k], e1[k], rtol=1e-4, atol=1e-5)
    # both ranks wrote their RNG state; rank 0 wrote the manifest covering both
    manifest = json.loads((two / "checkpoints" / "step_00000006" / "manifest.json").read_text())
    assert {"rng/rank_00000.safetensors", "rng/rank_00001.safetensors"} <= set(manifest["files"])
    print("\n" + "\n".join(l for l in log.splitlines() if l.startswith(("step", "done"))))


@pytest.mark.slow
def test_deepspeed_launcher_two_ranks(tmp_path):
    deepspeed_bin = Path(sys.executable).with_name("deepspeed")
    cmd = [str(deepspeed_bin), "--num_accelerators", "2", "--master_port", str(free_port()),
           "--module", "djepa.core.train.selftest", "--output-dir", str(tmp_path), "--micro-batch",
           "4", *ARGS]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "done: step 6 finished=True" in res.stdout + res.stderr
