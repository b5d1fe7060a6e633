"""The sampler flags of image-sample / image-inpaint come from core (djepa.core.sampler_flags,
nested without prefix) and keep the spellings and defaults users type (README)."""

from __future__ import annotations

import pytest

from djepa.core.cli import flag_fields, parse
from djepa.core.sampler_flags import SamplerFlags
from djepa.image.inpaint import ImageInpaintConfig
from djepa.image.sample import ImageSampleConfig

SAMPLER_KEYS = {"ar_steps", "denoise_steps", "cfg", "cfg_schedule", "temperature", "flow_solver",
                "seed", "device", "precision", "compile"}


@pytest.mark.parametrize("cls", [ImageSampleConfig, ImageInpaintConfig])
def test_the_cli_configs_nest_the_core_sampler_flags(cls):
    keys = flag_fields(cls)
    assert {k for k, path in keys.items() if path[0] == "sampler"} == SAMPLER_KEYS
    assert all(keys[k] == ("sampler", k) for k in SAMPLER_KEYS)


def test_image_sample_defaults_are_the_ones_users_have():
    cfg = parse(ImageSampleConfig, ["--checkpoint", "runs/image"])
    s = cfg.sampler
    assert (s.ar_steps, s.denoise_steps, s.cfg, s.cfg_schedule, s.temperature, s.flow_solver) \
        == (None, 100, 3.0, "linear", 1.0, "heun")
    assert (s.seed, s.device, s.precision, s.compile) == (0, "auto", "bf16", False)
    assert (cfg.checkpoint, cfg.classes, cfg.num_per_class, cfg.batch_size, cfg.output_dir) \
        == ("runs/image", "all", 10, 100, "samples")
    # K defaults to the number of unknown tokens capped at 64; the flags map onto SamplerConfig
    sc = s.sampler_config(16)
    assert (sc.num_ar_steps, sc.cfg_scale, sc.cfg_schedule, sc.temperature, sc.num_denoise_steps,
            sc.flow_solver, sc.flow_time_shift) == (16, 3.0, "linear", 1.0, 100, "heun", None)
    assert s.sampler_config(256).num_ar_steps == 64


def test_every_sampler_flag_parses_to_the_value_typed():
    # the README's image-sample line plus every other sampler flag
    argv = ("--checkpoint runs/image --ar-steps 16 --denoise-steps 25 --cfg 2.5 --cfg-schedule constant "
            "--temperature 0.97 --flow-solver euler --seed 7 --device cpu --precision fp32 --compile "
            "--batch-size 7 --num-per-class 3 --classes 0,3 --output-dir out").split()
    cfg = parse(ImageSampleConfig, argv)
    assert cfg.sampler == SamplerFlags(ar_steps=16, denoise_steps=25, cfg=2.5, cfg_schedule="constant",
                                       temperature=0.97, flow_solver="euler", seed=7, device="cpu",
                                       precision="fp32", compile=True)
    assert (cfg.batch_size, cfg.num_per_class, cfg.classes, cfg.output_dir) == (7, 3, "0,3", "out")
    sc = cfg.sampler.sampler_config(16)
    assert (sc.num_ar_steps, sc.cfg_scale, sc.cfg_schedule, sc.temperature, sc.num_denoise_steps,
            sc.flow_solver) == (16, 2.5, "constant", 0.97, 25, "euler")


def test_image_inpaint_parses_the_same_sampler_flags():
    cfg = parse(ImageInpaintConfig, "--checkpoint r --image x.png --box 0,0,4,4 --cfg 1.5 --seed 3".split())
    assert cfg.sampler == SamplerFlags(cfg=1.5, seed=3)
    assert cfg.sampler.flow_solver == "heun" and cfg.sampler.ar_steps is None


def test_a_config_file_uses_the_same_flat_sampler_keys(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("ar_steps: 8\ncfg: 4.0\nflow_solver: euler\n")
    cfg = parse(ImageSampleConfig, ["--config", str(f), "--checkpoint", "r", "--cfg", "2.0"])
    assert (cfg.sampler.ar_steps, cfg.sampler.cfg, cfg.sampler.flow_solver) == (8, 2.0, "euler")
