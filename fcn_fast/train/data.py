"""Segmentation data: the PASCAL VOC 2012 and SBD layouts, split lists, the input
normalisation conventions, training augmentation and the deterministic sampler.

Samples leave the workers as uint8 tensors (image (3, H, W) RGB, label (H, W)); the
float conversion and normalisation run on the training device (`normalize`), which
moves a quarter of the bytes through pinned memory. Labels stay uint8 up to the loss,
whose kernels read them as they are (an eighth of int64's bytes).

Every random choice of a sample (scale, crop, flip) is drawn from a generator seeded by
(run seed, epoch, position in the epoch's order), never from a worker's RNG state, so
a resumed or a multi-process run sees the same augmented batches as an uninterrupted
single-process one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

IGNORE = 255

# Input conventions of the trunk weights (channel order and mean/std on the 0..255 scale).
NORMALIZATIONS = {
    # torchvision's ImageNet weights: RGB, (x / 255 - mean) / std
    "torchvision": {
        "bgr": False,
        "mean": [123.675, 116.28, 103.53],
        "std": [58.395, 57.12, 57.375],
    },
    # converted Caffe weights (the released FCNs, pytorch-fcn): BGR, x - mean, unscaled
    "caffe": {"bgr": True, "mean": [104.00698793, 116.66876762, 122.67891434], "std": [1, 1, 1]},
}


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map, 256 RGB triples flattened (index 255 = (224, 224, 192))."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def _pil():
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - Pillow is in the train and test extras
        raise ImportError(
            "fcn-fast train/eval/predict read images with Pillow: pip install 'fcn_fast[train]'"
        ) from error
    return Image


def read_image(path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    with _pil().open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_label(path, n_class: int) -> np.ndarray:
    """(H, W) uint8 class indices of a palette/greyscale PNG or an SBD cls/*.mat file,
    checked: every value is a class in [0, n_class) or the ignore label 255."""
    path = Path(path)
    if path.suffix == ".mat":
        from scipy.io import loadmat

        try:
            label = loadmat(path)["GTcls"][0]["Segmentation"][0]
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"{path}: not an SBD label file (expected the struct GTcls with a "
                f"Segmentation field): {error}"
            ) from error
    else:
        with _pil().open(path) as image:
            if image.mode not in ("P", "L"):
                raise ValueError(
                    f"{path}: a label image must hold class indices (palette 'P' or "
                    f"greyscale 'L' PNG), got mode {image.mode!r}"
                )
            label = np.asarray(image)
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"{path}: a label must be a 2-D map, got shape {label.shape}")
    bad = (label >= n_class) & (label != IGNORE)
    if bad.any():
        values = sorted({int(v) for v in np.unique(label[bad])})[:8]
        raise ValueError(
            f"{path}: label values {values} are neither a class in [0, {n_class}) "
            f"nor the ignore label {IGNORE}"
        )
    return label.astype(np.uint8)


def find_split(root: Path, split: str) -> Path:
    """The split list: a path, or a name looked up as ImageSets/Segmentation/<name>.txt
    (VOC) or <name>.txt (SBD) under root."""
    candidates = [
        Path(split),
        root / "ImageSets" / "Segmentation" / f"{split}.txt",
        root / f"{split}.txt",
    ]
    for candidate in candidates:
        if candidate.suffix == ".txt" and candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates[1:])
    raise FileNotFoundError(f"split {split!r}: no split list file; looked for {looked}")


def dataset_layout(root: Path) -> str:
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return "voc"
    if (root / "img").is_dir() and (root / "cls").is_dir():
        return "sbd"
    raise FileNotFoundError(
        f"{root}: not a segmentation dataset: expected the PASCAL VOC layout "
        "(JPEGImages/, SegmentationClass/, ImageSets/Segmentation/) or the SBD layout "
        "(img/, cls/, train.txt, val.txt)"
    )


class SegmentationDataset(Dataset):
    """Images and labels of one split of a VOC- or SBD-layout dataset.

    Construction checks the split list, that every image has its label, and (from the
    file headers, for VOC) that their sizes agree; label values are checked as each
    label is read. An item is an index, or (index, seed) to draw the augmentation of
    `transform` from that seed. Returns (image (3, H, W) uint8 RGB, label (H, W) uint8).
    """

    def __init__(self, root, split: str, n_class: int, transform=None):
        if not 1 <= n_class <= IGNORE:
            raise ValueError(f"n_class must be in [1, {IGNORE}] (uint8 labels), got {n_class}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"--data {self.root}: no such directory")
        self.layout = dataset_layout(self.root)
        self.split_file = find_split(self.root, split)
        self.n_class, self.transform = n_class, transform
        ids = [line.split()[0] for line in self.split_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise ValueError(f"{self.split_file}: the split list is empty")
        self.ids = ids
        if self.layout == "voc":
            images, labels = "JPEGImages/{}.jpg", "SegmentationClass/{}.png"
        else:
            images, labels = "img/{}.jpg", "cls/{}.mat"
        self.files = [
            (self.root / images.format(i), self.root / labels.format(i)) for i in self.ids
        ]
        for image, label in self.files:
            if not image.is_file():
                raise FileNotFoundError(f"{self.split_file} lists {image}, which does not exist")
            if not label.is_file():
                raise FileNotFoundError(f"{image} has no label: {label} does not exist")
        if self.layout == "voc":
            Image = _pil()
            for image, label in self.files:
                with Image.open(image) as a, Image.open(label) as b:
                    if a.size != b.size:
                        raise ValueError(
                            f"{label}: label size {b.size[0]}x{b.size[1]} differs from "
                            f"the image {image} ({a.size[0]}x{a.size[1]})"
                        )

    def __len__(self):
        return len(self.files)

    def load(self, index: int):
        """(image (H, W, 3) uint8, label (H, W) uint8), checked."""
        image_path, label_path = self.files[index]
        image, label = read_image(image_path), read_label(label_path, self.n_class)
        if image.shape[:2] != label.shape:
            raise ValueError(
                f"{label_path}: label size {label.shape[1]}x{label.shape[0]} differs from "
                f"the image {image_path} ({image.shape[1]}x{image.shape[0]})"
            )
        return image, label

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, label = self.load(index)
        if self.transform is not None:
            image, label = self.transform(image, label, np.random.default_rng(seed))
        # copies: decoded and cropped arrays are read-only or strided views
        image = torch.from_numpy(np.array(image.transpose(2, 0, 1), order="C"))
        return image, torch.from_numpy(np.array(label, order="C"))


class TrainTransform:
    """Random scale (bilinear image, nearest label), random crop to `crop_size` with the
    image padded by its mean colour and the label by 255, random horizontal flip.
    crop_size None keeps the whole (scaled) image."""

    def __init__(self, crop_size, scale_range=(0.5, 2.0), flip=True, pad_value=(124, 116, 104)):
        self.crop_size, self.scale_range, self.flip = crop_size, tuple(scale_range), flip
        self.pad_value = np.asarray(pad_value, np.uint8)

    def __call__(self, image, label, rng: np.random.Generator):
        low, high = self.scale_range
        scale = rng.uniform(low, high)
        if scale != 1.0:
            Image = _pil()
            h, w = label.shape
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
            label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
        if self.crop_size is not None:
            image, label = self._crop(image, label, rng)
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return image, label

    def _crop(self, image, label, rng):
        ch, cw = self.crop_size
        h, w = label.shape
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        if ph or pw:
            padded = np.empty((h + ph, w + pw, 3), np.uint8)
            padded[:] = self.pad_value
            padded[:h, :w] = image
            image = padded
            label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE)
            h, w = label.shape
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        return image[y : y + ch, x : x + cw], label[y : y + ch, x : x + cw]


def pad_collate(batch):
    """Stack (image, label) pairs, padding smaller ones at the bottom/right (image 0,
    label 255) to the largest in the batch: whole-image batches of unequal sizes."""
    h = max(label.shape[0] for _, label in batch)
    w = max(label.shape[1] for _, label in batch)
    images = torch.zeros(len(batch), 3, h, w, dtype=torch.uint8)
    labels = torch.full((len(batch), h, w), IGNORE, dtype=torch.uint8)
    for i, (image, label) in enumerate(batch):
        images[i, :, : label.shape[0], : label.shape[1]] = image
        labels[i, : label.shape[0], : label.shape[1]] = label
    return images, labels


def normalize(images: torch.Tensor, normalization: dict) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) to the float input of the trunk's weight convention."""
    x = images.float()
    if normalization["bgr"]:
        x = x.flip(1)
    mean = torch.tensor(normalization["mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(normalization["std"], device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def sample_seed(seed: int, epoch: int, position: int) -> list[int]:
    """The augmentation seed of the sample at `position` of `epoch`'s order."""
    return [seed, epoch, position]


class TrainSampler(Sampler):
    """Endless (index, augmentation seed) items from iteration `start_iteration` on.

    Each epoch's order is DistributedSampler's (shuffled from (seed, epoch), rank's
    share, last incomplete global batch dropped); the seed of a sample is derived from
    its position in the epoch's global order, so K processes with batch B/K see exactly
    the samples and augmentations of one process with batch B.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank=0, world=1, start_iteration=0):
        if n < batch_size * world:
            raise ValueError(
                f"the training split has {n} images, fewer than one global batch "
                f"({batch_size * world})"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.start = rank, world, start_iteration
        self.iterations_per_epoch = n // (batch_size * world)

    def __iter__(self):
        # Samples a rank takes per epoch: whole global batches only.
        per_rank = self.iterations_per_epoch * self.batch_size
        epoch, offset = divmod(self.start, self.iterations_per_epoch)
        offset *= self.batch_size
        while True:
            order = DistributedSampler(
                range(self.n), self.world, self.rank, shuffle=True, seed=self.seed
            )
            order.set_epoch(epoch)
            indices = list(order)[:per_rank]
            for j in range(offset, per_rank):
                # DistributedSampler gives rank r the global positions r, r + K, r + 2K ...
                position = j * self.world + self.rank
                yield indices[j], sample_seed(self.seed, epoch, position)
            epoch, offset = epoch + 1, 0


def shard(n: int, rank: int, world: int) -> list[int]:
    """Evaluation share of one rank: every image exactly once over all ranks."""
    return list(range(rank, n, world))


def loader_workers(workers) -> int:
    if workers is not None:
        return workers
    return min(4, max(1, (os.cpu_count() or 2) // 2))
