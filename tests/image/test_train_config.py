"""``image-train``'s config nests the core's dataclasses without renaming a flag (issue 11, item 9).

The expected values below are written by hand from the flat ``ImageTrainConfig`` that the nested
one replaced (its field defaults), not produced by the code under test.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import typing
from pathlib import Path

import pytest

from djepa.core.cli import UserError, flag_fields, flat_dict, parse
from djepa.core.config import PRESETS, LossConfig, ModelSpec, preset
from djepa.core.train.config import TrainConfig
from djepa.image.train import IMAGE_TRAIN_DEFAULTS, ImageTrainConfig, build_model_config

README = Path(__file__).resolve().parents[2] / "README.md"

# Every flag of the flat ImageTrainConfig with its default before the nesting.
BEFORE = dict(
    dataset="digits", data_dir=None, image_size=None, patch_size=2, preset="small", loss="diffusion",
    beta_schedule="linear", prediction_loss_weight=1.0, pos_embed="learned", batch_size=64, grad_accum=1,
    max_steps=3000, lr=1e-3, blr=1e-4, warmup_steps=200, lr_schedule="constant", min_lr=0.0,
    weight_decay=0.02, weight_decay_end=None, ema_decay=0.999, ema_warmup_steps=500, grad_clip=3.0,
    output_dir="runs/image", checkpoint_every=500, keep_last=2, sample_every=1000, log_every=50, seed=0,
    resume="auto", zero_stage=1, precision="bf16", num_workers=0, sample_ar_steps=16, sample_cfg=3.0,
    vae=None, latent_scale=None, latent_shift=None, cached_latents=None)
# Engine settings image-train never exposed: the old run() left them at TrainConfig's defaults;
# now they are flags too, with the same values.
ENGINE_ONLY = dict(betas=[0.9, 0.95], eps=1e-8, max_nonfinite_steps=20, stop_at_step=None, tensorboard=True,
                   progress_bar=True, verify_checksums=True, deepspeed_log_level="warning")
# Flags added after the nesting: --cpu-speed (item 10; on = the speed paths the old CLI always ran).
ADDED = dict(cpu_speed="on")

# The image-train command lines of README.md (after the command) → the values they change.
README_COMMANDS = {
    "": {},
    "--output-dir runs/digits --seed 0": dict(output_dir="runs/digits", seed=0),
    "--dataset idx --data-dir ../shared/data/fashion-mnist --patch-size 4 --output-dir runs/fmnist":
        dict(dataset="idx", data_dir="../shared/data/fashion-mnist", patch_size=4, output_dir="runs/fmnist"),
    "--dataset imagefolder --data-dir /data/imagenet/train --image-size 64 --patch-size 4 --preset B --precision bf16":
        dict(dataset="imagefolder", data_dir="/data/imagenet/train", image_size=64, patch_size=4, preset="B"),
    "--max-steps 100000": dict(max_steps=100000),  # README: --config my_run.yaml --max-steps 100000
    "--cached-latents cache --latent-scale 1.19 --patch-size 2 --preset B":
        dict(cached_latents="cache", latent_scale=1.19, preset="B"),
    "--zero-stage 2 --output-dir runs/ddp": dict(zero_stage=2, output_dir="runs/ddp"),
    "--preset B --precision bf16 --zero-stage 2": dict(preset="B", zero_stage=2),
    "--preset L --precision bf16": dict(preset="L"),
}
# Flags the README names in its prose, and the other flags of the old config.
OTHER_COMMANDS = {
    "--lr None": dict(lr=None),
    "--weight-decay 0.02 --weight-decay-end 0.2": dict(weight_decay_end=0.2),
    "--vae diffusers:PATH --patch-size 1": dict(vae="diffusers:PATH", patch_size=1),
    "--batch-size 8 --grad-accum 4 --blr 2e-4 --lr-schedule cosine --min-lr 1e-6 --warmup-steps 0":
        dict(batch_size=8, grad_accum=4, blr=2e-4, lr_schedule="cosine", min_lr=1e-6, warmup_steps=0),
    "--loss flow --beta-schedule cosine --prediction-loss-weight 0 --pos-embed rope --preset tiny":
        dict(loss="flow", beta_schedule="cosine", prediction_loss_weight=0.0, pos_embed="rope", preset="tiny"),
    "--ema-decay 0.9999 --ema-warmup-steps 0 --grad-clip 1.5 --checkpoint-every 7 --keep-last 3":
        dict(ema_decay=0.9999, ema_warmup_steps=0, grad_clip=1.5, checkpoint_every=7, keep_last=3),
    "--sample-every 0 --log-every 1 --resume no --num-workers 2 --precision fp32 --checkpoint-every 9":
        dict(sample_every=0, log_every=1, resume=False, num_workers=2, precision="fp32", checkpoint_every=9),
    "--resume yes --sample-ar-steps 4 --sample-cfg 1.5 --latent-shift 0.1 --data-dir d --image-size 28":
        dict(resume=True, sample_ar_steps=4, sample_cfg=1.5, latent_shift=0.1, data_dir="d", image_size=28),
    "--cpu-speed off": dict(cpu_speed="off"),
}


def _readme_image_train_args() -> list[str]:
    """The arguments after ``image-train`` / ``djepa.image.train`` of every README command."""
    text = README.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        m = re.search(r"(?:uv run image-train|djepa\.image\.train)(.*)$", line)
        if m is None or "`" in line:
            continue
        args = shlex.split(m.group(1).split("#")[0])
        if "--config" in args:  # the file of that example does not exist; its other flags count
            i = args.index("--config")
            args = args[:i] + args[i + 2:]
        out.append(" ".join(args))
    return out


def test_readme_lists_the_commands_this_test_checks():
    assert sorted(set(_readme_image_train_args())) == sorted(README_COMMANDS)


@pytest.mark.parametrize("command", list(README_COMMANDS) + list(OTHER_COMMANDS))
def test_flags_parse_to_the_values_of_the_flat_config(command):
    changed = {**README_COMMANDS, **OTHER_COMMANDS}[command]
    expected = {**BEFORE, **ENGINE_ONLY, **ADDED, **changed}
    got = flat_dict(parse(ImageTrainConfig, shlex.split(command)))
    assert got == expected


def test_defaults_build_the_same_engine_config_as_before():
    # every TrainConfig field, as the old run() built it from the flat defaults
    assert ImageTrainConfig().train == TrainConfig(
        output_dir="runs/image", max_steps=3000, micro_batch_size=64, grad_accum_steps=1, blr=1e-4, lr=1e-3,
        lr_schedule="constant", warmup_steps=200, min_lr=0.0, weight_decay=0.02, weight_decay_end=None,
        betas=(0.9, 0.95), eps=1e-8, grad_clip=3.0, zero_stage=1, precision="bf16", ema_decay=0.999,
        ema_warmup_steps=500, checkpoint_every=500, keep_last=2, sample_every=1000, log_every=50, seed=0,
        num_workers=0, max_nonfinite_steps=20, resume="auto", stop_at_step=None, tensorboard=True,
        progress_bar=True, verify_checksums=True, deepspeed_log_level="warning")


def test_small_preset_is_in_core_and_is_the_image_default_model():
    # the values of the old image-side _preset_overrides("small") on top of tiny
    assert PRESETS["small"] == dict(encoder_dim=128, encoder_depth=3, encoder_heads=4, predictor_dim=128,
                                    predictor_depth=3, predictor_heads=4, buffer_size=4, attn_dropout=0.0,
                                    proj_dropout=0.0, loss=dict(mlp_depth=3, mlp_width=128))
    model = build_model_config(ImageTrainConfig(), channels=1, image_size=8, num_classes=10)
    assert model == preset("small", token_dim=4, grid=(4, 4), num_classes=10)
    assert (model.encoder_dim, model.encoder_depth, model.predictor_depth, model.buffer_size,
            model.loss.mlp_depth, model.loss.mlp_width, model.label_drop_prob, model.qk_norm) == \
        (128, 3, 3, 4, 3, 128, 0.1, True)
    assert model.loss == LossConfig(mlp_depth=3, mlp_width=128)
    # the CLI's preset choices are exactly the core's presets
    assert set(typing.get_args(typing.get_type_hints(ModelSpec)["preset"])) == set(PRESETS)


def test_the_image_config_does_not_redeclare_core_fields():
    core_flags = set(flag_fields(TrainConfig)) | set(flag_fields(ModelSpec))
    core_fields = {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(ModelSpec)}
    own = {f.name for f in dataclasses.fields(ImageTrainConfig)} - {"train", "model"}
    assert not own & (core_flags | core_fields)
    # the nested defaults are the core's, except the documented CPU-run deviations
    cfg = ImageTrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name not in IMAGE_TRAIN_DEFAULTS:
            assert getattr(cfg.train, f.name) == f.default, f.name
    assert dataclasses.replace(cfg.model, preset="B") == ModelSpec()
    assert ModelSpec().loss == LossConfig().kind and ModelSpec().prediction_loss_weight == LossConfig().prediction_weight


def test_a_flag_declared_twice_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Twice:
        train: TrainConfig
        batch_size: int = 3

    with pytest.raises(TypeError, match="--batch-size is declared twice"):
        flag_fields(Twice)


def test_config_file_uses_the_flat_keys(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("batch_size: 16\ngrad-accum: 2\npreset: tiny\nloss: flow\nresume: 'no'\n"
                 "betas: [0.8, 0.9]\nseed: 5\noutput_dir: runs/x\n")
    cfg = parse(ImageTrainConfig, ["--config", str(f), "--seed", "6"])
    assert (cfg.train.micro_batch_size, cfg.train.grad_accum_steps, cfg.train.betas, cfg.train.resume,
            cfg.train.seed, cfg.train.output_dir) == (16, 2, (0.8, 0.9), False, 6, "runs/x")
    assert (cfg.model.preset, cfg.model.loss) == ("tiny", "flow")
    f.write_text("micro_batch_size: 16\n")  # the attribute name is not a flag: refused by name
    with pytest.raises(UserError, match="micro_batch_size"):
        parse(ImageTrainConfig, ["--config", str(f)])
    f.write_text("train:\n  max_steps: 3\n")  # no nested sections: the keys stay flat
    with pytest.raises(UserError, match="train"):
        parse(ImageTrainConfig, ["--config", str(f)])
