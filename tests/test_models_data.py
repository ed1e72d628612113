"""Every registered model and dataset works; normalisation lives in the model; real CIFAR-10 loads."""

import os
import shutil

import pytest
import torch

from hvdat.data import DATASETS, crop_flip, load_splits
from hvdat.errors import UsageError
from hvdat.models import MODELS, build_model


@pytest.mark.parametrize("arch", MODELS.names() + ["resnet18"])
def test_every_model_classifies_batches(arch):
    model = build_model(arch, 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_models_accept_grayscale():
    model = build_model("resnet18", 10, (1, 32, 32), (0.3,), (0.4,)).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)


def test_unknown_arch_lists_the_choices():
    with pytest.raises(UsageError, match="small-cnn, preact-resnet18, wrn-34-10"):
        MODELS.get("resnet-9000")


def test_digits_is_real_and_embedded():
    splits = load_splits("digits", None)
    assert len(splits.train) == 1437 and len(splits.test) == 360 and splits.num_classes == 10
    x, y = splits.train[0]
    assert x.shape == (1, 16, 16) and x.min() >= 0 and x.max() <= 1 and x.max() > 0.5
    labels = torch.tensor([splits.test[i][1] for i in range(len(splits.test))])
    assert len(labels.unique()) == 10


def test_subsets_are_fixed():
    a = load_splits("digits", None, train_samples=100)
    b = load_splits("digits", None, train_samples=100)
    assert len(a.train) == 100 and torch.equal(a.train.images, b.train.images)


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if not DATASETS.get(n).needs_dir])
def test_datasets_without_a_directory_load(name):
    splits = load_splits(name, None, train_samples=64, test_samples=32)
    assert len(splits.train) == 64 and len(splits.test) == 32
    # hvdat eval loads with train_samples=1: it must see the test split the training run saw
    evaluated = load_splits(name, None, train_samples=1, test_samples=32).test
    assert torch.equal(evaluated.images, splits.test.images) and torch.equal(evaluated.labels, splits.test.labels)


def test_real_cifar10_in_imagefolder_layout(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HVDAT_CACHE", str(tmp_path))
    splits = load_splits("cifar10", str(cifar_dir), train_samples=300, test_samples=100)
    assert splits.num_classes == 10 and splits.shape == (3, 32, 32)
    assert len(splits.train) == 300 and len(splits.test) == 100
    assert list(tmp_path.glob("folder-*.pt")), "decoded images are cached for the next run"
    again = load_splits("imagefolder", str(cifar_dir), train_samples=300, test_samples=100)
    assert torch.equal(again.train.images, splits.train.images)


def test_the_decode_cache_sees_an_image_replaced_in_place(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HVDAT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (data / split / cls).mkdir(parents=True)
            for name in sorted(os.listdir(cifar_dir / "test" / cls))[:3]:
                shutil.copy(cifar_dir / "test" / cls / name, data / split / cls / name)
    before = load_splits("imagefolder", str(data), 0, 0).train
    victim = sorted((data / "train" / "cat").iterdir())[0]
    shutil.copy(sorted((cifar_dir / "test" / "ship").iterdir())[0], victim)  # same name, other pixels
    after = load_splits("imagefolder", str(data), 0, 0).train
    assert not torch.equal(before.images, after.images)
    assert len(list((tmp_path / "cache").glob("folder-*.pt"))) == 3  # train before/after, test


def _write_cifar10_release(cifar_dir, root, per_batch: int = 4):
    """The original CIFAR-10 python release (cifar-10-batches-py: five pickled training batches, a test batch and
    batches.meta), holding a few real CIFAR-10 images; returns their pixels and labels, training images first."""
    import pickle

    import numpy as np
    from PIL import Image

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    classes = sorted(p.name for p in (cifar_dir / "train").iterdir())
    pixels, labels = [], []
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        split = "test" if name == "test_batch" else "train"
        files = [(sorted((cifar_dir / split / c).iterdir())[k], i) for i, c in enumerate(classes)][:per_batch]
        data = np.stack([np.asarray(Image.open(f).convert("RGB")) for f, _ in files])
        batch_labels = [label for _, label in files]
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data.transpose(0, 3, 1, 2).reshape(len(files), -1), "labels": batch_labels}, handle)
        pixels.append(data)
        labels += batch_labels
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": classes}, handle)
    return np.concatenate(pixels), labels


def test_the_original_cifar10_release_loads(cifar_dir, tmp_path, monkeypatch):
    """`--dataset cifar10 --data-dir DIR` with torchvision's release in DIR (not the ImageFolder layout). The
    release's md5 check is switched off: these batches hold 24 real images, not the 60,000 it expects."""
    import os

    from torchvision.datasets import cifar

    pixels, labels = _write_cifar10_release(cifar_dir, tmp_path)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    splits = load_splits("cifar10", str(tmp_path))
    assert splits.num_classes == 10 and splits.shape == (3, 32, 32)
    assert len(splits.train) == 20 and len(splits.test) == 4
    images = torch.cat([splits.train.images, splits.test.images])
    assert torch.equal(images, torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert torch.cat([splits.train.labels, splits.test.labels]).tolist() == labels


def test_crop_flip_is_reproducible_and_keeps_shape():
    x = torch.rand(8, 3, 32, 32)
    a = crop_flip()(x, torch.Generator().manual_seed(3))
    b = crop_flip()(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_normalisation_is_inside_the_model():
    model = build_model("small-cnn", 10, (1, 16, 16), (0.3,), (0.4,))
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.3]))
    assert torch.allclose(model.std.flatten(), torch.tensor([0.4]))


def test_large_image_folders_stream_with_imagenet_transforms(tmp_path):
    """ImageNet-sized folders are not decoded into memory: they stream with crop/resize transforms."""
    from PIL import Image

    for split in ("train", "val"):
        for label in ("n01", "n02"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (300, 260), (40 * i, 100, 200)).save(folder / f"{i}.jpg")
    splits = load_splits("imagenet", str(tmp_path))
    assert splits.num_classes == 2 and splits.shape == (3, 224, 224)
    x, y = splits.train[0]
    assert x.shape == (3, 224, 224) and x.min() >= 0 and x.max() <= 1
    assert splits.test[5][0].shape == (3, 224, 224)
