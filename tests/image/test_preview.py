"""``image-train``'s preview hook: a labelled PNG grid whose image i is the sample of its class
drawn alone with its own generator (seed + i), whatever else is in the grid."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from djepa.core.config import SamplerConfig, preset
from djepa.core.model import DJEPA
from djepa.core.sampler import generate
from djepa.core.train.preview import PreviewRequest
from djepa.image.preview import ImageGridPreview
from djepa.image.tokenizer import PixelTokenizer


def test_image_grid_preview_equals_each_image_sampled_alone(tmp_path):
    torch.manual_seed(0)
    model = DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=3)).eval()
    tokenizer = PixelTokenizer(1, 8, 2)
    sampler = SamplerConfig(num_ar_steps=2, cfg_scale=2.0, num_denoise_steps=3)
    hook = ImageGridPreview(tokenizer, ["zero", "one", "two"], sampler, num_images=7)
    assert hook.per_class == 2 and hook.labels().tolist() == [0, 0, 1, 1, 2, 2]
    request = PreviewRequest(step=12, samples_dir=tmp_path / "samples", device=torch.device("cpu"), seed=5)
    with torch.no_grad():
        preview = hook(model, request)
        alone = []
        for i, c in enumerate([0, 0, 1, 1, 2, 2]):
            tok = generate(model, torch.tensor([c]), sampler,
                           generators=[torch.Generator().manual_seed(5 + i)],
                           clip_range=tokenizer.value_range)
            alone.append(tokenizer.decode(tok.float()).clamp(0, 1))
    expected = make_grid(torch.cat(alone), nrow=2, padding=2, pad_value=0.5)
    assert preview.tensorboard_image.shape == (3, 3 * 10 + 2, 2 * 10 + 2)  # make_grid: grey → RGB
    torch.testing.assert_close(preview.tensorboard_image, expected, rtol=0, atol=1e-5)
    assert list(preview.files) == [tmp_path / "samples" / "step_00000012.png"]
    with Image.open(preview.files[0]) as png:
        assert png.format == "PNG" and png.height == 3 * (64 + 2) + 2  # 8x8 cells upscaled to 64


def test_many_classes_give_one_image_each_of_the_first_ones():
    hook = ImageGridPreview(None, [str(i) for i in range(250)], SamplerConfig(), num_images=100)
    assert hook.per_class == 1 and hook.labels().tolist() == list(range(100))
