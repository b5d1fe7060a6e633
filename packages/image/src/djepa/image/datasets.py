"""Image datasets in the standard on-disk formats of the field (DESIGN.md §5, image).

Three sources, all returning ``(image, label)`` pairs with

* ``image``: ``[C, H, W]`` float32 in ``[0, 1]`` (``C`` = :attr:`channels`, ``H = W`` =
  :attr:`image_size`),
* ``label``: a 0-d ``torch.long`` class index in ``[0, num_classes)``.

``DigitsDataset``
    scikit-learn's ``load_digits`` (1,797 real 8×8 handwritten digits, 10 classes, shipped
    inside scikit-learn): the embedded default, no download.
``IDXDataset``
    MNIST / Fashion-MNIST IDX files read directly (LeCun's format: big-endian ``int32`` magic
    2051 for ``uint8`` images ``[N, H, W]``, 2049 for ``uint8`` labels ``[N]``), raw or gzip.
``ImageFolderDataset``
    ImageNet layout ``root/<class>/*.{JPEG,jpg,jpeg,png}`` with ADM's centre crop (the
    preprocessing used by MAR / D-JEPA on ImageNet, paper §4 / App. C) and horizontal flips.

:func:`build_dataset` picks one by name. Every dataset exposes ``num_classes``,
``image_size``, ``channels`` and ``targets`` (``[N]`` long, the label of every item, useful for
class-balanced sampling and evaluation).
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DATASET_NAMES",
    "DigitsDataset",
    "IDXDataset",
    "ImageFolderDataset",
    "build_dataset",
    "center_crop_arr",
    "read_idx",
    "resize_images",
]

DATASET_NAMES = ("digits", "idx", "imagefolder")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")

Transform = Callable[[Tensor], Tensor]


def resize_images(images: Tensor, size: int, mode: str = "bilinear") -> Tensor:
    """Resize a batch of square images to ``size × size``.

    Args:
        images: ``[B, C, H, W]`` (or ``[C, H, W]``) float tensor.
        size: target side length in pixels.
        mode: ``"bilinear"`` (``align_corners=False``, antialias **off**: exact pixel-centre
            interpolation, so upscaling a digit by an integer factor is smooth and reversible
            by area averaging) or ``"nearest"`` (pixel replication), or ``"area"`` (block
            averaging, the right choice for downscaling).

    Returns:
        The resized float tensor, same leading dims; returned unchanged when already ``size``.
        Bilinear output of inputs in ``[0, 1]`` stays in ``[0, 1]`` (convex combinations).

    Raises:
        ValueError: unknown ``mode`` or ``size < 1``.
    """
    if mode not in ("bilinear", "nearest", "area"):
        raise ValueError(f"resize mode must be 'bilinear', 'nearest' or 'area', got {mode!r}")
    if size < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    squeeze = images.dim() == 3
    x = images.unsqueeze(0) if squeeze else images
    if mode == "bilinear":
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    else:
        x = F.interpolate(x, size=(size, size), mode=mode)
    return x.squeeze(0) if squeeze else x


# ----------------------------------------------------------------------------------------------
# scikit-learn digits


def digits_split_indices(split: str, test_fraction: float = 0.25, seed: int = 0) -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits()`` for a deterministic stratified split.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        test_fraction: share of every class held out for ``"test"`` (default 0.25 → 450 test
            and 1,347 train images).
        seed: seed of the stratified shuffle (``sklearn.model_selection.train_test_split``).

    Returns:
        ``[n]`` int64 numpy array, sorted ascending. ``"train"`` and ``"test"`` are disjoint
        and together cover all 1,797 images.

    Raises:
        ValueError: unknown ``split``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise ValueError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
    y = load_digits().target
    idx = np.arange(len(y))
    if split == "all":
        return idx
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, stratify=y, random_state=seed
    )
    return np.sort(train_idx if split == "train" else test_idx)


class DigitsDataset(Dataset):
    """scikit-learn's real handwritten digits (``load_digits``: 1,797 images, 8×8, 10 classes).

    The raw pixel values are integers 0..16; they are divided by 16 so that ``image`` lies in
    ``[0, 1]`` (0 = background, 1 = full ink).

    Args:
        image_size: output side (8 = native). Larger sizes are produced by
            :func:`resize_images` with ``interpolation`` (default ``"bilinear"``, antialias
            off, ``align_corners=False``; ``"nearest"`` replicates pixels).
        split: ``"all"`` (default, 1,797 images), or the deterministic stratified ``"train"``
            (1,347) / ``"test"`` (450) split of :func:`digits_split_indices` — the same split
            the reference classifier (:mod:`djepa.image.classifier`) is fitted / scored on.
        split_seed: seed of that split.
        transform: optional callable applied to each ``[1, H, W]`` image after resizing.
        interpolation: ``"bilinear"`` or ``"nearest"``.

    Items: ``(image [1, image_size, image_size] float32 in [0, 1], label long 0..9)``.
    All images are preprocessed once at construction (≈ 1,797 × image_size² floats).
    """

    channels = 1
    num_classes = 10

    def __init__(
        self,
        image_size: int = 8,
        split: str = "all",
        split_seed: int = 0,
        transform: Transform | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        from sklearn.datasets import load_digits

        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
        digits = load_digits()
        idx = digits_split_indices(split, seed=split_seed)
        images = torch.from_numpy(digits.images[idx].astype(np.float32) / 16.0).unsqueeze(1)
        self.images = resize_images(images, image_size, interpolation).contiguous()
        self.targets = torch.from_numpy(digits.target[idx].astype(np.int64))
        self.image_size = int(image_size)
        self.split = split
        self.transform = transform
        self.class_names = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


# ----------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)

IDX_MAGIC_IMAGES = 2051  # 0x00000803: unsigned byte, 3 dims
IDX_MAGIC_LABELS = 2049  # 0x00000801: unsigned byte, 1 dim
_IDX_PREFIX = {"train": "train", "test": "t10k"}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, OSError) as e:  # truncated / not gzip
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"IDX file {path}: cannot read ({type(e).__name__}: {e})") from e


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) of unsigned bytes into a numpy array.

    Format (LeCun et al., the MNIST page): big-endian ``int32`` magic whose low byte is the
    number of dimensions and third byte the element type (``0x08`` = ``uint8``), then one
    big-endian ``int32`` per dimension, then the data in C order.

    Args:
        path: the file.
        expected_magic: 2051 (images) or 2049 (labels); ``None`` accepts any ``uint8`` IDX.

    Returns:
        ``uint8`` array of the stored shape (``[N, H, W]`` for images, ``[N]`` for labels).

    Raises:
        FileNotFoundError: missing file.
        ValueError: bad magic, non-``uint8`` element type, or a size that does not match the
            header (truncated / padded file); the message names the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"IDX file {path}: only {len(data)} bytes, no header")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(
            f"IDX file {path}: bad magic number {magic} (expected {expected_magic})"
        )
    if (magic >> 16) != 0 or ((magic >> 8) & 0xFF) != 0x08:
        raise ValueError(f"IDX file {path}: bad magic number {magic} (not an unsigned-byte IDX file)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"IDX file {path}: truncated header ({len(data)} bytes, need {header})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise ValueError(
            f"IDX file {path}: size mismatch: header says dims {dims} → {expected} bytes, "
            f"file has {len(data)} bytes ({'truncated' if len(data) < expected else 'trailing data'})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx_file(root: Path, prefix: str, kind: str) -> Path | None:
    """``root/{prefix}-{kind}-idx?-ubyte[.gz]`` (also the ``.idx?-ubyte`` spelling)."""
    ndim = "3" if kind == "images" else "1"
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            p = root / f"{prefix}-{kind}{sep}idx{ndim}-ubyte{ext}"
            if p.is_file():
                return p
    return None


class IDXDataset(Dataset):
    """MNIST / Fashion-MNIST split read straight from its IDX files.

    Looks in ``root`` for ``{p}-images-idx3-ubyte`` and ``{p}-labels-idx1-ubyte`` (each raw or
    ``.gz``; ``p`` = ``train`` or ``t10k``; the ``.idx3-ubyte`` spelling is accepted too; the
    uncompressed file wins when both exist). No checksums are verified — only the IDX header,
    so re-compressed copies load.

    Args:
        root: folder holding the files.
        split: ``"train"`` (``train-*``) or ``"test"`` (``t10k-*``).
        image_size: output side (``None`` = native 28). Resized with :func:`resize_images`
            (``"bilinear"``, antialias off, for upscaling; ``"area"`` is used automatically
            when shrinking).
        transform: optional callable applied to each ``[1, H, W]`` image.

    Items: ``(image [1, S, S] float32 in [0, 1] (= byte / 255), label long)``.
    ``num_classes`` = ``max(label) + 1`` over the split (10 for MNIST / Fashion-MNIST).

    Raises:
        FileNotFoundError: the folder or one of the split's files is missing (message names
            the folder and the expected file names).
        ValueError: unknown split, bad magic / truncated file (names the file), or a different
            number of images and labels.
    """

    channels = 1

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        image_size: int | None = None,
        transform: Transform | None = None,
    ) -> None:
        if split not in _IDX_PREFIX:
            raise ValueError(f"IDX split must be 'train' or 'test', got {split!r}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"IDX data folder {root} does not exist")
        prefix = _IDX_PREFIX[split]
        img_path = _find_idx_file(root, prefix, "images")
        lbl_path = _find_idx_file(root, prefix, "labels")
        if img_path is None or lbl_path is None:
            raise FileNotFoundError(
                f"IDX {split} split not found in {root}: expected {prefix}-images-idx3-ubyte[.gz] "
                f"and {prefix}-labels-idx1-ubyte[.gz]"
            )
        images = read_idx(img_path, IDX_MAGIC_IMAGES)
        labels = read_idx(lbl_path, IDX_MAGIC_LABELS)
        if len(images) != len(labels):
            raise ValueError(
                f"IDX {split} split in {root}: {len(images)} images in {img_path.name} but "
                f"{len(labels)} labels in {lbl_path.name}"
            )
        self.root = root
        self.split = split
        self.image_files = (img_path, lbl_path)
        self.data = torch.from_numpy(images.copy())  # [N, H, W] uint8
        self.targets = torch.from_numpy(labels.astype(np.int64))
        self.native_size = int(images.shape[-1])
        self.image_size = int(image_size) if image_size is not None else self.native_size
        self.num_classes = int(self.targets.max()) + 1 if len(self.targets) else 0
        self.class_names = [str(i) for i in range(self.num_classes)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.data[index].unsqueeze(0).float() / 255.0
        if self.image_size != self.native_size:
            mode = "area" if self.image_size < self.native_size else "bilinear"
            image = resize_images(image, self.image_size, mode)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


# ----------------------------------------------------------------------------------------------
# ImageFolder (ImageNet layout)


def center_crop_arr(pil_image, image_size: int):
    """ADM's centre crop (Dhariwal & Nichol 2021, ``guided_diffusion/image_datasets.py``; used
    by MAR and D-JEPA for ImageNet).

    1. While the short side is ``>= 2 * image_size``, halve both sides with ``Image.BOX``
       (integer division).
    2. Resize with ``Image.BICUBIC`` so the short side is exactly ``image_size`` (long side
       ``round(side * scale)``).
    3. Crop the central ``image_size × image_size`` square (offset ``(side - size) // 2``).

    Args:
        pil_image: a ``PIL.Image.Image`` (any mode).
        image_size: output side in pixels.

    Returns:
        A ``PIL.Image.Image`` of size exactly ``(image_size, image_size)``, same mode.
    """
    from PIL import Image

    while min(pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(s // 2 for s in pil_image.size), resample=Image.BOX)
    scale = image_size / min(pil_image.size)
    pil_image = pil_image.resize(
        tuple(max(image_size, round(s * scale)) for s in pil_image.size), resample=Image.BICUBIC
    )
    w, h = pil_image.size
    left, top = (w - image_size) // 2, (h - image_size) // 2
    return pil_image.crop((left, top, left + image_size, top + image_size))


def read_synsets(path: str | os.PathLike) -> list[str]:
    """Class ids from a synsets file: one class per line, the first whitespace-separated token
    is the id (``n01440764 tench`` → ``n01440764``); blank lines are ignored. Line ``i`` (among
    non-blank lines) is class index ``i``."""
    ids = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if parts:
            ids.append(parts[0])
    if not ids:
        raise ValueError(f"synsets file {path} lists no classes")
    if len(set(ids)) != len(ids):
        raise ValueError(f"synsets file {path} lists a class twice")
    return ids


class ImageFolderDataset(Dataset):
    """Images in the ImageNet (torchvision ImageFolder) layout ``root/<class>/<file>``.

    Files with extensions ``.JPEG`` / ``.jpg`` / ``.jpeg`` / ``.png`` (case-insensitive) one
    level below ``root`` are used; hidden files and other extensions are ignored.

    Class index:
      * with ``synsets_file``: the line number of the folder name in that file (e.g.
        ImageNet's 1000-class order, ``num_classes`` = number of lines, so a subset of the
        classes keeps the standard indices); a folder not listed there raises ``ValueError``;
      * else, when every folder name is a decimal integer (the layout ``image-sample`` writes):
        ``int(name)`` (``num_classes`` = largest + 1);
      * else: the position of the folder name in the sorted list of folder names.

    Each image is opened with PIL, converted to RGB (grayscale / CMYK / palette JPEGs become
    3 equal or converted channels), centre-cropped with :func:`center_crop_arr`, and flipped
    horizontally with probability 0.5 when ``hflip`` (random source: ``generator`` if given,
    else the global torch RNG — which ``DataLoader`` seeds differently in every worker).

    Unreadable files (``on_error``):
      * ``"skip"`` (default): detected at load time (construction stays cheap): a
        ``UserWarning`` naming the path and the reason is issued once per file and the next
        readable item (index + 1, + 2, … cyclically) is returned in its place, with its own
        label. With ``verify=True`` every file is fully decoded at construction instead and bad
        ones are dropped from the index (with the same warning), so ``len()`` counts only good
        files (≈ 1 s per 100 ImageNet JPEGs).
      * ``"raise"``: ``RuntimeError`` naming the path and the reason.

    Args:
        root: the folder holding one sub-folder per class.
        image_size: output side in pixels.
        synsets_file: optional class-order file (see :func:`read_synsets`).
        hflip: random horizontal flip augmentation (p = 0.5).
        on_error: ``"skip"`` or ``"raise"``.
        verify: decode all files at construction (see above).
        generator: optional ``torch.Generator`` for the flips.
        transform: optional callable applied to each ``[3, S, S]`` image tensor.

    Items: ``(image [3, S, S] float32 in [0, 1] (= byte / 255), label long)``.

    Raises:
        FileNotFoundError: ``root`` missing.
        ValueError: ``root`` holds no class folder or no image file; bad ``on_error``; a class
            folder missing from the synsets file.
    """

    channels = 3

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int,
        synsets_file: str | os.PathLike | None = None,
        hflip: bool = True,
        on_error: str = "skip",
        verify: bool = False,
        generator: torch.Generator | None = None,
        transform: Transform | None = None,
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        class_dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_dirs:
            raise ValueError(f"image folder {root} has no class sub-folders (expected root/<class>/<image>)")

        if synsets_file is not None:
            order = read_synsets(synsets_file)
            position = {wnid: i for i, wnid in enumerate(order)}
            missing = [d for d in class_dirs if d not in position]
            if missing:
                raise ValueError(
                    f"class folders {missing[:5]} of {root} are not listed in synsets file {synsets_file}"
                )
            class_to_idx = {d: position[d] for d in class_dirs}
            num_classes = len(order)
            class_names = order
        elif all(d.isdigit() for d in class_dirs):
            class_to_idx = {d: int(d) for d in class_dirs}
            num_classes = max(class_to_idx.values()) + 1
            class_names = [str(i) for i in range(num_classes)]
        else:
            class_to_idx = {d: i for i, d in enumerate(class_dirs)}
            num_classes = len(class_dirs)
            class_names = class_dirs

        samples: list[tuple[str, int]] = []
        for d in class_dirs:
            for f in sorted((root / d).iterdir()):
                if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS:
                    samples.append((str(f), class_to_idx[d]))
        if not samples:
            raise ValueError(
                f"image folder {root} has no images (*.JPEG, *.jpg, *.jpeg, *.png) in its class folders"
            )

        self.root = root
        self.image_size = int(image_size)
        self.num_classes = num_classes
        self.class_names = class_names
        self.class_to_idx = class_to_idx
        self.hflip = hflip
        self.on_error = on_error
        self.generator = generator
        self.transform = transform
        self._reported: set[str] = set()
        self.samples = samples
        if verify:
            good = []
            for path, label in samples:
                try:
                    self._load(path)
                except Exception as e:  # noqa: BLE001 — any decoder failure
                    self._bad_file(path, e)
                    continue
                good.append((path, label))
            if not good:
                raise ValueError(f"image folder {root}: no readable image")
            self.samples = good
        self.targets = torch.tensor([s[1] for s in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: str) -> Tensor:
        from djepa.image.pixels import open_image

        img = center_crop_arr(open_image(path, "RGB"), self.image_size)
        arr = np.asarray(img, dtype=np.uint8)  # [S, S, 3]
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0

    def _bad_file(self, path: str, err: Exception) -> None:
        if self.on_error == "raise":
            raise RuntimeError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
        if path not in self._reported:
            self._reported.add(path)
            warnings.warn(
                f"skipping unreadable image {path}: {type(err).__name__}: {err}", stacklevel=3
            )

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        n = len(self.samples)
        for k in range(n):
            path, label = self.samples[(index + k) % n]
            try:
                image = self._load(path)
            except Exception as e:  # noqa: BLE001 — any decoder failure
                self._bad_file(path, e)
                continue
            break
        else:
            raise RuntimeError(f"image folder {self.root}: no readable image")
        if self.hflip and torch.rand((), generator=self.generator) < 0.5:
            image = image.flip(-1)
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.tensor(label, dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# factory


def build_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    split: str = "train",
    **kwargs,
) -> Dataset:
    """Build a dataset by name (the ``--dataset`` flag of the image CLIs).

    Args:
        name: ``"digits"``, ``"idx"`` or ``"imagefolder"``.
        data_dir: ``idx``: the folder with the IDX files; ``imagefolder``: the class-folder
            root; if it has a ``train`` or ``val`` sub-folder, the one matching ``split``
            (``"test"`` → ``val``) is used and a missing one raises ``FileNotFoundError``;
            ignored by ``digits``.
        image_size: output side (``None``: 8 for digits, native for idx, required for
            imagefolder).
        split: ``"train"`` / ``"test"`` (and ``"all"`` for digits).
        **kwargs: passed to the dataset class (e.g. ``synsets_file``, ``hflip``, ``on_error``,
            ``interpolation``).

    Returns:
        The dataset (it has ``num_classes``, ``image_size``, ``channels``, ``targets``).

    Raises:
        ValueError: unknown ``name`` (the message lists the known names), missing
            ``data_dir`` / ``image_size`` where required, plus the dataset's own errors.
        FileNotFoundError: missing folder / files (the dataset's own errors).
    """
    if name == "digits":
        return DigitsDataset(image_size=image_size or 8, split=split, **kwargs)
    if name == "idx":
        if data_dir is None:
            raise ValueError("dataset 'idx' needs a data directory (the folder with the IDX files)")
        return IDXDataset(data_dir, split=split, image_size=image_size, **kwargs)
    if name == "imagefolder":
        if data_dir is None:
            raise ValueError("dataset 'imagefolder' needs a data directory (root/<class>/<image>)")
        if image_size is None:
            raise ValueError("dataset 'imagefolder' needs an image size")
        root = Path(data_dir)
        if (root / "train").is_dir() or (root / "val").is_dir():
            sub = {"train": "train", "test": "val", "val": "val"}.get(split)
            if sub is None or not (root / sub).is_dir():
                raise FileNotFoundError(
                    f"image folder {root} has split sub-folders but no {sub or split!r} one for "
                    f"split {split!r}; pass the class-folder root itself as the data directory"
                )
            root = root / sub
        return ImageFolderDataset(root, image_size=image_size, **kwargs)
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
