"""`fcn-fast make-synthetic`: a procedurally drawn segmentation dataset in the PASCAL VOC
layout, so train / eval / predict run on a fresh machine with nothing downloaded.

Class 0 is a low-contrast background (a nearly grey gradient with noise); every other
class is one (shape, texture) pair drawn in a colour of its own (a hue in a bright or a
dark shade, see class_colour), jittered per object, 1 to 4
objects an image, later ones occluding earlier ones. As in VOC, a band along every
label boundary is marked 255 (ignore). Each image is drawn from its own generator
seeded by (seed, split, index), so the dataset is a function of the arguments.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fcn_fast.train.data import IGNORE, _pil, voc_palette

SHAPES = ("ellipse", "rectangle", "triangle", "diamond", "cross", "ring")
TEXTURES = ("solid", "hstripes", "vstripes", "checker", "diagonal", "dots")
MAX_CLASSES = 1 + len(SHAPES) * len(TEXTURES)


def class_names(classes: int) -> list[str]:
    names = ["background"]
    for c in range(1, classes):
        shape, texture = divmod(c - 1, len(TEXTURES))
        names.append(f"{TEXTURES[texture]}-{SHAPES[shape % len(SHAPES)]}")
    return names


def class_colour(c: int, classes: int) -> tuple[float, float]:
    """(hue, value) of class c >= 1: evenly spaced hues, each in a bright and a dark
    shade, so that colour alone tells most classes apart and shape and texture the rest."""
    hues = -(-(classes - 1) // 2)
    return ((c - 1) % hues) / hues, (0.95, 0.55)[(c - 1) // hues]


def _shape_mask(rng, size: int, shape: str) -> np.ndarray:
    Image = _pil()
    from PIL import ImageDraw

    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    radius = rng.uniform(0.12, 0.26) * size
    cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
    angle = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(0.6, 1.0)

    def polygon(points):
        # points in the unit frame, scaled by (radius, radius * aspect) and rotated
        c, s = np.cos(angle), np.sin(angle)
        pts = [
            (cx + radius * (x * c - y * aspect * s), cy + radius * (x * s + y * aspect * c))
            for x, y in points
        ]
        draw.polygon(pts, fill=1)

    if shape == "ellipse":
        draw.ellipse([cx - radius, cy - radius * aspect, cx + radius, cy + radius * aspect], 1)
    elif shape == "ring":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], 1)
        inner = radius * 0.5
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], 0)
    elif shape == "rectangle":
        polygon([(-1, -1), (1, -1), (1, 1), (-1, 1)])
    elif shape == "triangle":
        polygon([(0, -1.1), (1.0, 0.8), (-1.0, 0.8)])
    elif shape == "diamond":
        polygon([(0, -1.2), (0.7, 0), (0, 1.2), (-0.7, 0)])
    else:  # cross
        t = 0.35
        polygon(
            [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t),
             (-1, t), (-1, -t), (-t, -t)]
        )  # fmt: skip
    return np.asarray(mask, bool)


def _texture(rng, size: int, texture: str) -> np.ndarray:
    """(size, size) float in [0, 1]: 1 where the object's darker second tone shows."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(5, 9)
    phase = rng.uniform(0, period)
    if texture == "solid":
        return np.zeros((size, size), np.float32)
    if texture == "hstripes":
        return (((y + phase) % period) < period / 2).astype(np.float32)
    if texture == "vstripes":
        return (((x + phase) % period) < period / 2).astype(np.float32)
    if texture == "diagonal":
        return (((x + y + phase) % period) < period / 2).astype(np.float32)
    if texture == "checker":
        return ((((x + phase) // period) + ((y + phase) // period)) % 2).astype(np.float32)
    # dots
    dx, dy = (x + phase) % period - period / 2, (y + phase) % period - period / 2
    return (dx * dx + dy * dy < (period / 3.5) ** 2).astype(np.float32)


def draw_sample(rng: np.random.Generator, size: int, classes: int):
    """One (image (size, size, 3) uint8, label (size, size) uint8) pair."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # background: a nearly grey gradient with noise (the objects are saturated)
    base = rng.uniform(70, 190) + rng.uniform(-12, 12, 3)
    tilt = rng.uniform(-30, 30, (2, 1)) + rng.uniform(-8, 8, (2, 3))
    image = base + x[..., None] * tilt[0] + y[..., None] * tilt[1]
    image += rng.normal(0, 8, (size, size, 1))
    label = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 5)):
        c = int(rng.integers(1, classes))
        shape = SHAPES[((c - 1) // len(TEXTURES)) % len(SHAPES)]
        texture = TEXTURES[(c - 1) % len(TEXTURES)]
        mask = _shape_mask(rng, size, shape)
        hue, value = class_colour(c, classes)
        hue = (hue + rng.normal(0, 0.01)) % 1.0
        value = np.clip(value + rng.uniform(-0.05, 0.05), 0, 1)
        rgb = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.8, 1.0), value))
        tone = 1 - 0.25 * _texture(rng, size, texture)[..., None]
        image = np.where(mask[..., None], 255 * rgb * tone, image)
        label[mask] = c
    image += rng.normal(0, 4, image.shape)
    # ignore band: every pixel with a 4-neighbour of another class
    edge = np.zeros_like(label, bool)
    edge[1:] |= label[1:] != label[:-1]
    edge[:-1] |= label[1:] != label[:-1]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    label[edge] = IGNORE
    return np.clip(image, 0, 255).astype(np.uint8), label


def _check(name, value, low, high=None):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"make-synthetic: {name} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"make-synthetic: {name} must be <= {high}, got {value}")


def make_synthetic(out, classes=21, train=400, val=100, size=128, seed=0) -> Path:
    """Write the dataset to the directory `out` (which must not exist, or be empty).

    It is built in a temporary directory beside `out` and renamed into place, so a
    failure never leaves a half-written dataset. Returns `out`.
    """
    _check("--classes", classes, 2, MAX_CLASSES)
    _check("--train", train, 1)
    _check("--val", val, 1)
    _check("--size", size, 16)
    _check("--seed", seed, 0)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"make-synthetic: {out} exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    Image = _pil()
    palette = voc_palette()
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (work / folder).mkdir(parents=True)
        for split_number, (split, count) in enumerate((("train", train), ("val", val))):
            ids = [f"{split}_{i:05d}" for i in range(count)]
            for i, name in enumerate(ids):
                rng = np.random.default_rng([seed, split_number, i])
                image, label = draw_sample(rng, size, classes)
                Image.fromarray(image).save(work / "JPEGImages" / f"{name}.jpg", quality=90)
                png = Image.fromarray(label)
                png.putpalette(palette)  # mode L becomes P, values kept
                png.save(work / "SegmentationClass" / f"{name}.png")
            (work / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
                "".join(f"{name}\n" for name in ids)
            )
        meta = {
            "generator": "fcn-fast make-synthetic",
            "classes": classes,
            "class_names": class_names(classes),
            "train": train,
            "val": val,
            "size": size,
            "seed": seed,
        }
        (work / "synthetic.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out
