"""djepa.core.cpu_speed.malloc: freed host memory stays mapped, measured as page faults.

Each case runs in a fresh interpreter: the setting is process-wide and cannot be undone.
A 48 MiB tensor is above glibc's largest dynamic mmap threshold (32 MiB), so with glibc's
defaults every allocation is a new mapping and faults in all its pages again.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")

MIB = 48
PAGES = MIB * 2**20 // 4096

_PROBE = textwrap.dedent(f"""
    import resource, sys, torch
    {{setup}}
    n = {MIB} * 2**20 // 4
    for _ in range(10):  # first touches fault; glibc's heap settles after a few cycles
        x = torch.empty(n); x.fill_(1.0); del x
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        x = torch.empty(n); x.fill_(1.0); del x
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
""")


def _probe(setup: str, **env: str) -> tuple[str, float]:
    code = _PROBE.replace("{setup}", setup)
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                             "LD_PRELOAD", "GLIBC_TUNABLES")}
    full_env.update(env, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    applied, faults = out.stdout.split()
    return applied, float(faults)


def test_glibc_defaults_fault_every_large_allocation_again():
    # the problem the module exists for: each 48 MiB block is mapped and faulted in anew
    # (>= one fault per 2 MiB page even with transparent huge pages on)
    applied, faults = _probe("applied = 'none'")
    assert faults >= MIB / 2, faults


def test_keep_freed_memory_removes_the_faults():
    applied, faults = _probe("from djepa.core.cpu_speed.malloc import keep_freed_memory\n"
                             "applied = keep_freed_memory()")
    assert applied == "True"
    assert faults <= 0.01 * PAGES, faults


_CLI = ("from dataclasses import dataclass, field\n"
        "from djepa.core.cli import parse, run_main, with_cpu_speed\n"
        "from djepa.core.cpu_speed import CpuSpeedFlags\n"
        "@dataclass(frozen=True)\n"
        "class Probe:\n"
        "    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)\n"
        "applied = run_main('probe', lambda: with_cpu_speed(parse(Probe, ARGS)) and 0)")


def test_cli_cpu_speed_on_applies_it():
    # every djepa CLI: run_main(prog, lambda: run(with_cpu_speed(parse(...)))); --cpu-speed on
    # is the default
    for args in ([], ["--cpu-speed", "on"]):
        applied, faults = _probe(_CLI.replace("ARGS", repr(args)))
        assert applied == "0"
        assert faults <= 0.01 * PAGES, (args, faults)


def test_cli_cpu_speed_off_keeps_glibc_defaults():
    applied, faults = _probe(_CLI.replace("ARGS", repr(["--cpu-speed", "off"])))
    assert applied == "0"
    assert faults >= MIB / 2, faults


def test_cpu_speed_install_applies_it_only_for_malloc_keep():
    applied, faults = _probe("from djepa.core.cpu_speed import SpeedSettings, install, installed\n"
                             "install(SpeedSettings(malloc='system'))\n"
                             "applied = installed().malloc")
    assert applied == "system" and faults >= MIB / 2, faults
    applied, faults = _probe("from djepa.core.cpu_speed import SpeedSettings, install, installed\n"
                             "install(SpeedSettings(malloc='keep'))\n"
                             "applied = installed().malloc")
    assert applied == "keep" and faults <= 0.01 * PAGES, faults


def test_user_malloc_variables_win():
    for env in (dict(MALLOC_MMAP_THRESHOLD_="131072"), dict(GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")):
        applied, _ = _probe("from djepa.core.cpu_speed.malloc import keep_freed_memory\n"
                            "applied = keep_freed_memory()", **env)
        assert applied == "False", env


def test_threshold_out_of_range_raises():
    from djepa.core.cpu_speed.malloc import keep_freed_memory

    for bad in (0, -5, 2**31):
        with pytest.raises(ValueError, match="threshold_bytes"):
            keep_freed_memory(bad)
