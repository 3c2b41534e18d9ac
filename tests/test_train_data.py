"""Datasets, make-synthetic, augmentation and the deterministic sampler (issue 10)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from train_helpers import TINY_DATA, random_sample, write_voc

from fcn_fast.train import synthetic
from fcn_fast.train.data import (
    IGNORE,
    NORMALIZATIONS,
    SegmentationDataset,
    TrainSampler,
    TrainTransform,
    normalize,
    pad_collate,
    shard,
    voc_palette,
)

PIL = pytest.importorskip("PIL", reason="Pillow reads and writes the dataset images")
from PIL import Image  # noqa: E402


def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


# --- make-synthetic


def test_make_synthetic_layout_labels_and_determinism(tmp_path):
    a = synthetic.make_synthetic(tmp_path / "a", **TINY_DATA)
    b = synthetic.make_synthetic(tmp_path / "b", **TINY_DATA)
    c = synthetic.make_synthetic(tmp_path / "c", **{**TINY_DATA, "seed": 1})
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
    train = (a / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (a / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train) == TINY_DATA["train"] and len(val) == TINY_DATA["val"]
    assert not set(train) & set(val)
    seen = set()
    for name in train + val:
        with Image.open(a / "SegmentationClass" / f"{name}.png") as png:
            assert png.mode == "P"
            assert png.getpalette()[: 3 * 256] == voc_palette()
            label = np.asarray(png)
        with Image.open(a / "JPEGImages" / f"{name}.jpg") as jpg:
            assert jpg.size == (TINY_DATA["size"], TINY_DATA["size"])
        seen |= set(np.unique(label).tolist())
        # the ignore band separates every two classes: no 4-neighbours of two classes
        valid = label != IGNORE
        for dy, dx in ((0, 1), (1, 0)):
            p, q = label[: label.shape[0] - dy, : label.shape[1] - dx], label[dy:, dx:]
            both = valid[: label.shape[0] - dy, : label.shape[1] - dx] & valid[dy:, dx:]
            assert (p[both] == q[both]).all()
    assert IGNORE in seen and 0 in seen
    assert seen - {IGNORE} <= set(range(TINY_DATA["classes"]))
    assert len(seen - {0, IGNORE}) >= 2  # several object classes drawn


def test_make_synthetic_leaves_nothing_on_failure(tmp_path, monkeypatch):
    calls = []

    def failing(rng, size, classes):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return original(rng, size, classes)

    original = synthetic.draw_sample
    monkeypatch.setattr(synthetic, "draw_sample", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        synthetic.make_synthetic(tmp_path / "d", **TINY_DATA)
    assert list(tmp_path.iterdir()) == []


def test_make_synthetic_refuses_a_non_empty_dir_and_bad_arguments(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        synthetic.make_synthetic(tmp_path / "x", **TINY_DATA)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="--classes"):
        synthetic.make_synthetic(tmp_path / "y", classes=1)
    with pytest.raises(ValueError, match="--size"):
        synthetic.make_synthetic(tmp_path / "y", size=4)


# --- datasets and their errors


def test_voc_dataset_reads_images_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    samples = {f"s{i}": random_sample(rng) for i in range(3)}
    root = write_voc(tmp_path, samples)
    dataset = SegmentationDataset(root, "train", n_class=3)
    assert len(dataset) == 3 and dataset.layout == "voc"
    image, label = dataset[1]
    assert image.shape == (3, 24, 20) and image.dtype == torch.uint8
    assert torch.equal(label, torch.from_numpy(samples["s1"][1]))


def test_split_list_by_name_or_path(tmp_path):
    rng = np.random.default_rng(0)
    root = write_voc(tmp_path, {"a": random_sample(rng), "b": random_sample(rng)})
    (root / "ImageSets/Segmentation/seg11valid.txt").write_text("b\n")
    assert SegmentationDataset(root, "seg11valid", 3).ids == ["b"]
    listing = tmp_path / "mine.txt"
    listing.write_text("a\nb\n")
    assert SegmentationDataset(root, str(listing), 3).ids == ["a", "b"]


def test_sbd_layout(tmp_path):
    scipy_io = pytest.importorskip("scipy.io", reason="SBD labels are MATLAB files")
    rng = np.random.default_rng(0)
    image, label = random_sample(rng, n_class=5)
    (tmp_path / "img").mkdir()
    (tmp_path / "cls").mkdir()
    Image.fromarray(image).save(tmp_path / "img" / "2008_000002.jpg")
    scipy_io.savemat(
        tmp_path / "cls" / "2008_000002.mat",
        {"GTcls": {"Segmentation": label, "Boundaries": np.zeros(1), "CategoriesPresent": 1}},
    )
    (tmp_path / "train.txt").write_text("2008_000002\n")
    dataset = SegmentationDataset(tmp_path, "train", n_class=5)
    assert dataset.layout == "sbd"
    assert torch.equal(dataset[0][1], torch.from_numpy(label))


def test_missing_split_file_names_it(tmp_path):
    root = write_voc(tmp_path, {"a": random_sample(np.random.default_rng(0))})
    with pytest.raises(FileNotFoundError, match="split 'val'.*val.txt"):
        SegmentationDataset(root, "val", 3)


def test_image_without_label_names_it(tmp_path):
    rng = np.random.default_rng(0)
    root = write_voc(tmp_path, {"a": random_sample(rng), "b": (random_sample(rng)[0], None)})
    with pytest.raises(FileNotFoundError, match=r"b\.jpg has no label.*b\.png"):
        SegmentationDataset(root, "train", 3)


def test_label_value_outside_classes_names_the_file(tmp_path):
    image, label = random_sample(np.random.default_rng(0))
    label[3, 3] = 7
    root = write_voc(tmp_path, {"bad": (image, label)})
    dataset = SegmentationDataset(root, "train", 3)
    with pytest.raises(ValueError, match=r"bad\.png: label values \[7\]"):
        dataset[0]


def test_size_mismatch_names_the_file(tmp_path):
    image, _ = random_sample(np.random.default_rng(0), h=24, w=20)
    root = write_voc(tmp_path, {"odd": (image, np.zeros((20, 24), np.uint8))})
    with pytest.raises(ValueError, match=r"odd\.png: label size 24x20 differs"):
        SegmentationDataset(root, "train", 3)


def test_rgb_label_is_rejected(tmp_path):
    image, label = random_sample(np.random.default_rng(0))
    root = write_voc(tmp_path, {"rgb": (image, label)}, label_mode="RGB")
    with pytest.raises(ValueError, match=r"rgb\.png: a label image must hold class indices"):
        SegmentationDataset(root, "train", 3)[0]


def test_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a segmentation dataset"):
        SegmentationDataset(tmp_path, "train", 3)


# --- augmentation, batching, normalisation


def test_crop_pads_with_ignore_and_mean_and_flip_keeps_alignment():
    image = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3)
    label = np.arange(30, dtype=np.uint8).reshape(6, 5)
    transform = TrainTransform((8, 9), scale_range=(1, 1), flip=True, pad_value=(1, 2, 3))
    flips = set()
    for seed in range(12):
        out_image, out_label = transform(image, label, np.random.default_rng(seed))
        assert out_image.shape == (8, 9, 3) and out_label.shape == (8, 9)
        padded = out_label == IGNORE
        assert padded.sum() == 8 * 9 - 30
        assert (out_image[padded] == [1, 2, 3]).all()
        # every labelled pixel carries its own image pixel, mirrored or not
        ys, xs = np.nonzero(~padded)
        values = out_label[ys, xs]
        assert (out_image[ys, xs] == image[values // 5, values % 5]).all()
        flips.add(bool(out_label[0, 0] == 4 or out_label[0, -1] == 0))
        again = transform(image, label, np.random.default_rng(seed))
        assert np.array_equal(again[1], out_label)
    assert flips == {True, False}


def test_scale_resizes_label_with_nearest():
    image = np.zeros((10, 10, 3), np.uint8)
    label = np.zeros((10, 10), np.uint8)
    label[:, 5:] = 2
    _, out = TrainTransform(None, (2.0, 2.0), flip=False)(image, label, np.random.default_rng(0))
    assert out.shape == (20, 20)
    assert set(np.unique(out)) == {0, 2}  # no interpolated label values


def test_pad_collate_pads_to_the_largest():
    a = (torch.ones(3, 2, 4, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.uint8))
    b = (torch.ones(3, 3, 2, dtype=torch.uint8), torch.ones(3, 2, dtype=torch.uint8))
    images, labels = pad_collate([a, b])
    assert images.shape == (2, 3, 3, 4) and labels.shape == (2, 3, 4)
    assert labels[0, 2].tolist() == [IGNORE] * 4 and labels[1, :, 2:].eq(IGNORE).all()
    assert images[1, :, :, 2:].eq(0).all()


def test_normalize_conventions():
    rgb = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1)
    caffe = normalize(rgb, NORMALIZATIONS["caffe"]).flatten().tolist()
    # BGR order, Caffe means subtracted, no scaling
    assert caffe == pytest.approx([30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434])
    tv = normalize(rgb, NORMALIZATIONS["torchvision"]).flatten().tolist()
    expected = [
        (v / 255 - m) / s
        for v, m, s in zip((10, 20, 30), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    ]
    assert tv == pytest.approx(expected, rel=1e-5)


# --- sampler


def take(sampler, count):
    items = iter(sampler)
    return [next(items) for _ in range(count)]


def test_two_ranks_see_the_samples_and_seeds_of_one_process():
    one = take(TrainSampler(10, batch_size=4, seed=3), 4 * 5)  # 2 iterations/epoch
    ranks = [take(TrainSampler(10, 2, seed=3, rank=r, world=2), 2 * 5) for r in range(2)]
    for t in range(5):
        batch = one[4 * t : 4 * t + 4]
        split = ranks[0][2 * t : 2 * t + 2] + ranks[1][2 * t : 2 * t + 2]
        key = lambda item: (item[0], tuple(item[1]))
        assert sorted(batch, key=key) == sorted(split, key=key)
    epoch0 = [index for index, _ in one[:8]]
    assert len(set(epoch0)) == 8  # one epoch: distinct images


def test_sampler_resumes_mid_epoch():
    full = take(TrainSampler(10, 3, seed=1), 3 * 7)
    resumed = take(TrainSampler(10, 3, seed=1, start_iteration=4), 3 * 3)
    assert resumed == full[3 * 4 :]


def test_sampler_needs_one_global_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TrainSampler(3, 2, 0, world=2)


def test_evaluation_shards_cover_every_image_once():
    shards = [shard(7, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))
