"""djepa.core.cpu_speed: one explicit setting plugs the CPU speed paths into the model's maths
(djepa.core.ops); the model's code reads no environment and imports switch nothing on."""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from djepa.core import cpu_speed, ops
from djepa.core.cli import parse, run_main, with_cpu_speed
from djepa.core.config import preset
from djepa.core.cpu_speed import SpeedSettings
from djepa.core.cpu_speed.dropout import numpy_dropout, numpy_mask_sdpa
from djepa.core.cpu_speed.layer_norm import bf16_inference_layer_norm
from djepa.core.model import DJEPA

CORE = Path(__import__("djepa.core", fromlist=["x"]).__file__).parent
ON = SpeedSettings(malloc="system")  # every ops path on; malloc is process-wide
OFF = SpeedSettings.off()


def _environment_reads(path: Path) -> list[str]:
    """``os.environ`` / ``os.getenv`` / ``environ`` uses in a module's code (not its docstrings)."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
            hits.append(f"{path.name}:{node.lineno}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                a.name in ("environ", "getenv") for a in node.names):
            hits.append(f"{path.name}:{node.lineno}")
    return hits


def test_no_environment_read_in_the_model_code():
    # everything in djepa.core except the CLI plumbing (DJEPA_DEBUG), the distributed launcher
    # glue (RANK, LOCAL_RANK, MASTER_ADDR) and the malloc setting (the user's own glibc variables)
    allowed = {"cli.py", "malloc.py", "distributed.py", "selftest.py"}
    files = [p for p in CORE.rglob("*.py") if p.name not in allowed]
    assert {"attention.py", "norms.py", "dropout.py", "ops.py", "blocks.py", "model.py"} <= {p.name for p in files}
    assert [hit for p in files for hit in _environment_reads(p)] == []
    # and the probe does find a read (it is not a test that cannot fail)
    assert _environment_reads(CORE / "cli.py")


def test_importing_the_model_switches_no_speed_path_on():
    # a fresh interpreter, with the old variables set: the library computes with plain torch
    code = ("import djepa.core.model, djepa.core.sampler, djepa.core.train, djepa.core.cpu_speed as c, "
            "djepa.core.ops as o\nprint(sorted(o.overridden()), c.installed())")
    env = {"DJEPA_CPU_DROPOUT_RNG": "numpy", "DJEPA_MALLOC": "keep", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] " + repr(SpeedSettings.off())


def test_install_plugs_in_and_using_restores():
    with cpu_speed.using(OFF):
        assert ops.overridden() == {} and cpu_speed.installed() == OFF
        with cpu_speed.using(ON):
            assert ops.overridden() == {"dropout": numpy_dropout, "sdpa": numpy_mask_sdpa,
                                        "layer_norm_fp32": bf16_inference_layer_norm}
            assert cpu_speed.installed() == ON
            with cpu_speed.using(SpeedSettings(dropout_masks="torch", layer_norm=True, malloc="system")):
                assert set(ops.overridden()) == {"layer_norm_fp32"}
            assert cpu_speed.installed() == ON
        assert ops.overridden() == {}
    with pytest.raises(KeyError, match="unknown op"):
        ops.override(gelu=F.gelu)


def _tiny(dropout: float) -> DJEPA:
    torch.manual_seed(0)
    return DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10,
                        attn_dropout=dropout, proj_dropout=dropout))


def _loss(model, seed: int = 1):
    ema = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    tokens, labels = torch.randn(4, 16, 4), torch.randint(0, 10, (4,))
    return model(tokens, labels, target_model=ema, generator=torch.Generator().manual_seed(0)).loss


def test_setting_switches_the_paths_of_a_model_and_keeps_the_maths():
    model = _tiny(0.1).train()
    # without dropout in effect (eval) both settings compute the same function: fp32 exactly,
    # bf16 inference (LayerNorm kernel) to bf16 rounding
    x = torch.randn(2, 16, 4)
    labels = torch.tensor([1, 2])
    model.eval()
    with torch.no_grad():
        with cpu_speed.using(OFF):
            e_off = model.encode_target(x, labels)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                b_off = model.encode_target(x.bfloat16(), labels)
        with cpu_speed.using(ON):
            e_on = model.encode_target(x, labels)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                b_on = model.encode_target(x.bfloat16(), labels)
    assert torch.equal(e_on, e_off)
    torch.testing.assert_close(b_on.float(), b_off.float(), atol=0.05, rtol=0.02)
    # training with dropout: each setting is reproducible under torch.manual_seed; "off" draws
    # torch's own masks, "on" NumPy's (another stream, so another loss)
    model.train()
    with cpu_speed.using(OFF):
        l_off = _loss(model)
        assert torch.equal(l_off, _loss(model))
    with cpu_speed.using(ON):
        l_on = _loss(model)
        assert torch.equal(l_on, _loss(model))
    assert not torch.equal(l_on, l_off)
    # with dropout 0 nothing random is left: the two settings give the same training loss
    plain = _tiny(0.0).train()
    with cpu_speed.using(OFF):
        p_off = _loss(plain)
    with cpu_speed.using(ON):
        p_on = _loss(plain)
    torch.testing.assert_close(p_on, p_off, atol=1e-6, rtol=1e-6)


def test_the_cli_flag_installs_the_setting_for_the_run_only():
    from djepa.image.sample import ImageSampleConfig
    from djepa.image.train import ImageTrainConfig

    seen = []
    with cpu_speed.using(OFF):
        for cls, base in ((ImageTrainConfig, []), (ImageSampleConfig, ["--checkpoint", "run"])):
            for args, want in (([], ON), (["--cpu-speed", "on"], ON), (["--cpu-speed", "off"], OFF)):
                assert run_main("probe", lambda: seen.append(
                    (with_cpu_speed(parse(cls, base + args)).speed.cpu_speed, cpu_speed.installed())) and 0) == 0
                assert seen[-1][1].dropout_masks == want.dropout_masks
                assert seen[-1][1].layer_norm == want.layer_norm
                assert ops.overridden() == {}  # run_main puts the previous paths back (malloc stays)
        assert [s for s, _ in seen] == ["on", "on", "off"] * 2
    with pytest.raises(TypeError, match="CpuSpeedFlags"):
        with_cpu_speed(object())
