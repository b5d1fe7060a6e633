"""A run folder written before ``LossConfig.projector_order`` existed resumes with the order it was
trained with (``norm_first``), not today's default (issue 11, review of item 11)."""

from __future__ import annotations

import json

import pytest

from djepa.core.config import LossConfig, config_from_dict, preset, with_saved_defaults
from djepa.core.model import DJEPA
from djepa.core.train import checkpoint as ckpt
from djepa.image import train as train_cli

TINY = ["--preset", "tiny", "--batch-size", "8", "--sample-every", "0", "--log-every", "1",
        "--warmup-steps", "0", "--no-progress-bar", "--no-tensorboard"]

# A LossConfig section as the package wrote it before issue 11 (no projector_order), by hand.
OLD_LOSS = {"kind": "diffusion", "num_train_timesteps": 1000, "beta_schedule": "linear",
            "learn_sigma": True, "diffusion_batch_mul": 4, "mlp_depth": 2, "mlp_width": 64,
            "flow_time_shift": 1.0, "diffusion_weight": 1.0, "prediction_weight": 1.0,
            "prediction_beta": 2.0}


def test_a_saved_loss_config_without_projector_order_reads_as_norm_first():
    assert config_from_dict(LossConfig, dict(OLD_LOSS)).projector_order == "norm_first"
    assert config_from_dict(LossConfig, {**OLD_LOSS, "projector_order": "official"}).projector_order == "official"
    assert LossConfig().projector_order == "official"  # the default of a new config is unchanged
    filled = with_saved_defaults(type(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10)),
                                 {"encoder_dim": 64, "loss": dict(OLD_LOSS)})
    assert filled == {"encoder_dim": 64, "loss": {**OLD_LOSS, "projector_order": "norm_first"}}


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A 2-step tiny run whose config.json is rewritten as before issue 11: the model's loss
    section is the hand-written OLD_LOSS (same values, no projector_order key)."""
    out = tmp_path_factory.mktemp("old_run")
    assert train_cli.main(TINY + ["--max-steps", "2", "--checkpoint-every", "2",
                                  "--output-dir", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["loss"] == {**OLD_LOSS, "projector_order": "official"}
    cfg["model"]["loss"] = dict(OLD_LOSS)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def test_an_old_run_folder_resumes_with_the_norm_first_projector(old_run, capsys):
    assert train_cli.main(TINY + ["--max-steps", "4", "--output-dir", str(old_run)]) == 0
    printed = capsys.readouterr().out
    assert "predates loss.projector_order: resuming with loss.projector_order='norm_first'" in printed
    assert "resumed from" in printed and "step_00000002 at step 2" in printed
    exported = DJEPA.from_pretrained(old_run / "pretrained")
    assert exported.config.loss.projector_order == "norm_first"
    # the saved config.json is the old run's, unchanged (not rewritten with the new default)
    assert "projector_order" not in json.loads((old_run / "config.json").read_text())["model"]["loss"]


def test_the_engine_refuses_an_official_order_model_on_an_old_run(old_run, tmp_path):
    """Built with today's default ("official") against the old config: refused, not switched."""
    from djepa.core.train.config import TrainConfig
    from djepa.core.train.engine import _check_resume_compatible

    saved = json.loads((old_run / "config.json").read_text())
    model_cfg = preset("tiny", token_dim=4, grid=(4, 4), num_classes=10)
    from djepa.core.config import config_to_dict

    now = {**saved, "model": config_to_dict(model_cfg)}
    tag = ckpt.read_latest(old_run / "checkpoints")
    cfg = TrainConfig(output_dir=str(old_run), max_steps=4, micro_batch_size=8)
    with pytest.raises(ckpt.CheckpointError, match=r"different 'model' configuration \(differs in \['loss'\]\)"):
        _check_resume_compatible(old_run, old_run / "checkpoints" / tag, cfg, 1, now, ("model",),
                                 type(model_cfg))
    old_order = config_to_dict(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10,
                                      loss=dict(projector_order="norm_first")))
    _check_resume_compatible(old_run, old_run / "checkpoints" / tag, cfg, 1, {**saved, "model": old_order},
                             ("model",), type(model_cfg))  # the old order resumes


def test_an_old_export_loads_with_the_norm_first_projector(tmp_path):
    """A save_pretrained folder written before the field existed reads as the order it holds."""
    model = DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10,
                         loss=dict(projector_order="norm_first")))
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["config"]["loss"]["projector_order"]
    (tmp_path / "config.json").write_text(json.dumps(meta))
    loaded = DJEPA.from_pretrained(tmp_path)
    assert loaded.config.loss.projector_order == "norm_first"
    assert loaded.config == model.config
