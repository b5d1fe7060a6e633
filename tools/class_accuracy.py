"""Class-accuracy check of generated images (the image issue's quality bar).

A classifier fitted only on real images (``djepa.image.classifier``) labels every generated PNG
of an ImageFolder-layout sample folder (``DIR/<class_id>/*.png``, as written by
``image-sample``); the share labelled as the folder's class is printed per class and overall,
next to the classifier's accuracy on held-out real images.

    uv run python tools/class_accuracy.py --samples samples --dataset digits
    uv run python tools/class_accuracy.py --samples fm_samples --dataset fashion-mnist \
        --data-dir ../shared/data/fashion-mnist --json fm.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def load_samples(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``folder/<int>/*.png`` as ``[B, 1, H, W]`` float in [0, 1] (gray) and ``[B]`` labels."""
    images, labels = [], []
    for cls_dir in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        for png in sorted(cls_dir.glob("*.png")):
            arr = np.asarray(Image.open(png).convert("L"), dtype=np.float32) / 255.0
            images.append(torch.from_numpy(arr)[None])
            labels.append(int(cls_dir.name))
    if not images:
        raise SystemExit(f"class_accuracy: error: no <class>/*.png images under {folder}")
    return torch.stack(images), torch.tensor(labels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", required=True, type=Path, help="ImageFolder of generated PNGs")
    ap.add_argument("--dataset", choices=["digits", "fashion-mnist"], default="digits")
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (fashion-mnist only)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    from djepa.image.classifier import fit_reference_classifier

    images, labels = load_samples(args.samples)
    clf = fit_reference_classifier(args.dataset, data_dir=args.data_dir)
    pred = clf.predict(images)
    per_class = {int(c): float((pred[labels == c] == c).float().mean()) for c in labels.unique()}
    acc = float((pred == labels).float().mean())
    print(f"reference classifier ({clf.name}): {100 * clf.heldout_accuracy:.1f} % on "
          f"{clf.heldout_size} held-out real images")
    print("per class: " + ", ".join(f"{c}: {100 * a:.0f}%" for c, a in per_class.items()))
    print(f"class accuracy of {len(labels)} generated images: {100 * acc:.1f} %")
    if args.json:
        args.json.write_text(json.dumps(dict(accuracy=acc, per_class=per_class, n=len(labels),
                                             heldout_accuracy=clf.heldout_accuracy), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
