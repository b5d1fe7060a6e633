"""A run folder is data, not code (issue 12): tampered files are refused without running them,
``latest`` cannot point outside, one writer per folder, no silent restart over checkpoints the
run did not write, a full disk leaves no partial checkpoint.

Crafted payloads are pickles whose ``__reduce__`` calls ``open(marker, "w")``: loading them with
``torch.load(weights_only=False)`` would create the marker file; every test asserts it is never
created.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from djepa.core.safe_load import UnsafeFileError, torch_load
from djepa.core.train import CheckpointError, TrainConfig, train
from djepa.core.train import checkpoint as ckpt
from djepa.core.train.selftest import ToyDJEPA, toy_dataset

OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
MODEL = "mp_rank_00_model_states.pt"


class _Payload:
    """Unpickling this calls ``open(marker, "w")`` (creates the marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_payload(path: Path, marker: Path) -> None:
    torch.save({"module": {"w": torch.zeros(2)}, "evil": _Payload(marker)}, path)


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), max_steps=2, micro_batch_size=8, zero_stage=2,
                precision="fp32", lr=3e-3, weight_decay=0.0, ema_decay=0.9,
                tensorboard=False, progress_bar=False, log_every=100, checkpoint_every=1000)
    base.update(kw)
    return TrainConfig(**base)


def _run(out: Path, **kw):
    torch.manual_seed(0)
    return train(ToyDJEPA(noise_std=0.3), toy_dataset(8), _cfg(out, **kw))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --- loading -----------------------------------------------------------------------------------

def test_torch_load_refuses_a_payload_without_running_it(tmp_path):
    marker, f = tmp_path / "MARKER", tmp_path / "evil.pt"
    _write_payload(f, marker)
    with pytest.raises(UnsafeFileError) as e:
        torch_load(f)
    assert str(f) in _one_line(e) and "io.open" in str(e.value)
    assert not marker.exists()
    # a plain tensor file loads
    torch.save({"a": torch.arange(3)}, tmp_path / "ok.pt")
    assert torch.equal(torch_load(tmp_path / "ok.pt")["a"], torch.arange(3))


@pytest.mark.parametrize("fname", [OPTIM, MODEL])
def test_resume_refuses_a_tampered_deepspeed_file_even_with_a_rewritten_manifest(tmp_path, fname):
    _run(tmp_path)
    d = tmp_path / "checkpoints" / "step_00000002"
    marker = tmp_path / "MARKER"
    _write_payload(d / fname, marker)
    ckpt.write_manifest(d)            # the attacker rewrites the (unsigned) manifest
    ckpt.verify(d)
    with pytest.raises(CheckpointError) as e:
        _run(tmp_path, max_steps=4)
    assert str(d / fname) in _one_line(e) and "refused" in str(e.value)
    assert not marker.exists()


def test_a_pickled_rng_file_is_never_read_and_rng_round_trips_exactly(tmp_path):
    _run(tmp_path)
    d = tmp_path / "checkpoints" / "step_00000002"
    assert (d / "rng" / "rank_00000.safetensors").is_file()
    marker = tmp_path / "MARKER"
    _write_payload(d / "rng" / "rank_00000.pt", marker)   # the old, pickled file name
    ckpt.write_manifest(d)
    res = _run(tmp_path, max_steps=3)
    assert res.resumed_from == "step_00000002" and res.step == 3
    assert not marker.exists()
    # the stored state restores every generator exactly
    torch.manual_seed(5), np.random.seed(5), random.seed(5), random.gauss(0, 1)
    np.random.standard_normal()  # numpy holds a cached gaussian now
    tensors, meta = ckpt.rng_to_tensors(ckpt.rng_state())
    a = (torch.rand(4), np.random.standard_normal(3), random.random(), random.gauss(0, 1))
    ckpt.set_rng_state(ckpt.rng_from_tensors(tensors, meta))
    b = (torch.rand(4), np.random.standard_normal(3), random.random(), random.gauss(0, 1))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2:] == b[2:]
    # a garbage RNG file is a CheckpointError naming it
    (d / "rng" / "rank_00000.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}")
    with pytest.raises(CheckpointError, match=r"rank_00000\.safetensors"):
        ckpt.load_rng(d, 0)


def test_latest_pointing_outside_the_run_folder_is_refused(tmp_path):
    _run(tmp_path / "elsewhere")
    _run(tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / "latest"
    latest.write_text("../../elsewhere/checkpoints/step_00000002\n")
    with pytest.raises(CheckpointError) as e:
        _run(tmp_path / "run", max_steps=4)
    assert str(latest) in _one_line(e) and "not a checkpoint of this folder" in str(e.value)
    assert not (tmp_path / "elsewhere" / "checkpoints" / "step_00000004").exists()


def test_manifest_entries_outside_the_checkpoint_are_refused(tmp_path):
    d = tmp_path / "step_00000002"
    d.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"x")
    (d / "manifest.json").write_text(json.dumps(
        {"version": 1, "files": {"../outside.bin": {"size": 1, "sha256": None}}}))
    with pytest.raises(CheckpointError, match="is not a file inside"):
        ckpt.verify(d)


def test_latest_naming_a_symlinked_step_folder_is_refused(tmp_path):
    _run(tmp_path / "elsewhere")
    _run(tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    (root / "step_99999999").symlink_to(tmp_path / "elsewhere" / "checkpoints" / "step_00000002")
    (root / "latest").write_text("step_99999999\n")
    with pytest.raises(CheckpointError) as e:
        _run(tmp_path / "run", max_steps=4)
    assert "step_99999999, which is a symlink" in _one_line(e)
    assert not (tmp_path / "elsewhere" / "checkpoints" / "step_00000004").exists()


@pytest.mark.parametrize("where", ["file", "folder"])
def test_a_symlink_anywhere_in_a_checkpoint_is_refused(tmp_path, where):
    d = tmp_path / "step_00000002"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.bin").write_bytes(b"a")
    ckpt.write_manifest(d)
    ckpt.verify(d)                                   # a clean folder verifies
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.pt").write_bytes(b"x")
    if where == "file":   # not listed in the manifest, but DeepSpeed opens its files by name
        (d / "mp_rank_00_model_states.pt").symlink_to(tmp_path / "outside" / "x.pt")
    else:
        (d / "rng").symlink_to(tmp_path / "outside")
    with pytest.raises(CheckpointError, match="is a symlink"):
        ckpt.verify(d)


def test_resume_true_without_any_checkpoint_is_refused(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    tag, err = ckpt.choose_checkpoint(root, True)
    assert tag is None and "holds no checkpoint" in err
    assert ckpt.choose_checkpoint(root, "auto") == (None, None)


def test_a_symlinked_run_lock_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "bashrc"
    target.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").symlink_to(target)
    with pytest.raises(ckpt.RunFolderBusy, match="is a symlink"):
        with ckpt.run_folder_lock(out):
            pass
    assert target.read_text() == "precious\n"


# --- one writer --------------------------------------------------------------------------------

def test_second_run_on_a_locked_folder_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from djepa.core.train.checkpoint import _lock
            f = _lock(Path({str(tmp_path)!r}))
            print("locked", flush=True)
            time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ckpt.RunFolderBusy) as e:
            _run(tmp_path)
        assert f"pid {holder.pid}" in _one_line(e) and str(tmp_path) in str(e.value)
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    res = _run(tmp_path)          # the kernel dropped the dead holder's lock
    assert res.finished
    assert (tmp_path / "run.lock").read_text().startswith("pid ")


# --- no silent restart -------------------------------------------------------------------------

def test_every_checkpoint_failing_is_refused_and_nothing_is_deleted(tmp_path):
    _run(tmp_path, max_steps=4, checkpoint_every=2, keep_last=3)
    root = tmp_path / "checkpoints"
    before = {}
    for tag in ("step_00000002", "step_00000004"):
        f = root / tag / "ema.safetensors"
        data = bytearray(f.read_bytes())
        data[-1] ^= 0xFF                      # same size, other content: sha256 mismatch
        f.write_bytes(bytes(data))
        before[tag] = sorted(p.name for p in (root / tag).rglob("*"))
    with pytest.warns(RuntimeWarning, match="rejected"), pytest.raises(CheckpointError) as e:
        _run(tmp_path, max_steps=6, checkpoint_every=2, keep_last=3)
    msg = _one_line(e)
    assert "step_00000004" in msg and "ema.safetensors: sha256" in msg
    assert "move" in msg and "--output-dir" in msg
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == list(before)
    for tag, names in before.items():
        assert sorted(p.name for p in (root / tag).rglob("*")) == names
    assert (root / "latest").read_text().strip() == "step_00000004"


def test_choose_checkpoint_fresh_start_only_over_unfinished_writes(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_00000002").mkdir(parents=True)
    (root / "step_00000002" / MODEL).write_bytes(b"partial")     # killed before its manifest
    logs: list[str] = []
    with pytest.warns(RuntimeWarning, match="no manifest"):
        assert ckpt.choose_checkpoint(root, "auto", log=logs.append) == (None, None)
    with pytest.warns(RuntimeWarning):
        tag, err = ckpt.choose_checkpoint(root, True, log=logs.append)
    assert tag is None and "no complete, verified checkpoint" in err
    ckpt.set_aside(root, "step_00000002")                       # unfinished: removed
    assert not (root / "step_00000002").exists()
    (root / "step_00000004").mkdir()
    (root / "step_00000004" / MODEL).write_bytes(b"m")
    ckpt.write_manifest(root / "step_00000004")
    (root / "step_00000004" / MODEL).write_bytes(b"M")          # rejected on resume
    with pytest.warns(RuntimeWarning, match="sha256"):
        tag, err = ckpt.choose_checkpoint(root, "auto", log=logs.append)
    assert tag is None and "newest step_00000004" in err
    ckpt.set_aside(root, "step_00000004", logs.append)          # completed once: kept aside
    kept = [p.name for p in root.iterdir()]
    assert len(kept) == 1 and kept[0].startswith("step_00000004.rejected.")
    assert (root / kept[0] / MODEL).read_bytes() == b"M"


# --- full disk ---------------------------------------------------------------------------------

def test_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_partial_folder(tmp_path,
                                                                                monkeypatch):
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if "step_00000004" in str(f):     # the second checkpoint hits a full disk
            Path(f).write_bytes(b"PK\x03\x04partial")
            raise RuntimeError("[enforce fail at inline_container.cc:668] . unexpected pos "
                               "4288 vs 4186")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError) as e:
        _run(tmp_path, max_steps=4, checkpoint_every=2, keep_last=3)
    root = tmp_path / "checkpoints"
    msg = _one_line(e)
    assert "no space left" in msg and str(root / "step_00000004") in msg and " free" in msg
    assert not (root / "step_00000004").exists()
    assert (root / "latest").read_text().strip() == "step_00000002"
    ckpt.verify(root / "step_00000002")


def test_trainer_state_with_wrong_types_is_refused_naming_the_field(tmp_path):
    d = tmp_path / "step_00000002"
    d.mkdir()
    good = {"step": 2, "epoch": 0, "batch_index": 2, "skipped_total": 0,
            "consecutive_nonfinite": 0, "samples_seen": 16}
    (d / "trainer_state.json").write_text(json.dumps(good))
    assert ckpt.read_trainer_state(d)["step"] == 2
    for key, value in (("step", "2"), ("epoch", -1), ("batch_index", 1.5), ("samples_seen", True)):
        (d / "trainer_state.json").write_text(json.dumps({**good, key: value}))
        with pytest.raises(CheckpointError, match=rf"trainer_state\.json: field '{key}'"):
            ckpt.read_trainer_state(d)


def test_a_garbage_ema_file_with_a_rewritten_manifest_is_one_line(tmp_path):
    _run(tmp_path)
    d = tmp_path / "checkpoints" / "step_00000002"
    (d / "ema.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b'{"w": 1}' + b" " * 8)
    ckpt.write_manifest(d)
    with pytest.raises(CheckpointError) as e:
        _run(tmp_path, max_steps=3)
    assert str(d / "ema.safetensors") in _one_line(e)
