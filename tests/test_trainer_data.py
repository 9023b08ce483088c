"""trainers.data: idx files, synthetic data, ImageFolder through timm, samplers, seeded augmentation."""
from __future__ import annotations

import gzip
import shutil

import pytest
import torch

from trainers.config import load_config
from trainers.data import (EvalSampler, FashionMNIST, ResumableSampler, build_data, class_balanced_order, random_order,
                           read_idx)
from trainers.data.fashion_mnist import DEFAULT_ROOT
from trainers.data.transforms import PadCropFlip, SeededDataset
from trainers.data.synthetic import SyntheticImages
from trainers.errors import DataError


def test_fashion_mnist_default_install():
    train, test = FashionMNIST(train=True), FashionMNIST(train=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.bincount(test.targets).tolist() == [1000] * 10


def test_fashion_mnist_from_any_directory_raw_or_gz(tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with open(f"{DEFAULT_ROOT}/{name}.gz", "rb") as f:
            (tmp_path / name).write_bytes(gzip.decompress(f.read()))
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(f"{DEFAULT_ROOT}/{name}", tmp_path / name)
    raw, gz = FashionMNIST(tmp_path, train=False), FashionMNIST(DEFAULT_ROOT, train=False)
    assert torch.equal(raw.images, gz.images) and torch.equal(raw.targets, gz.targets)
    assert len(FashionMNIST(tmp_path, train=True)) == 60000


def test_missing_or_truncated_idx_files_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="has no train-images-idx3-ubyte\\[.gz\\]; install the data set with `apt-get install dataset-fashion-mnist`"):
        FashionMNIST(tmp_path)
    data = gzip.decompress(open(f"{DEFAULT_ROOT}/t10k-labels-idx1-ubyte.gz", "rb").read())
    (tmp_path / "labels").write_bytes(data[:100])
    with pytest.raises(DataError, match="truncated idx file"):
        read_idx(tmp_path / "labels")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(tmp_path / "junk")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_are_disjoint_cover_the_epoch_and_change_each_epoch(world_size):
    n, batch = 100, 4
    samplers = [ResumableSampler(random_order(n), n, batch, seed=7, rank=r, world_size=world_size)
                for r in range(world_size)]
    epochs = []
    for epoch in (0, 1):
        shards = []
        for s in samplers:
            s.set_epoch(epoch)
            shards.append([i for e, i in s if e == epoch])
        flat = [i for shard in shards for i in shard]
        assert len(flat) == len(set(flat)) == (n // (batch * world_size)) * batch * world_size
        assert len({len(shard) for shard in shards}) == 1  # equal steps on every rank
        epochs.append(flat)
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("order", ["random", "class-balanced"])
def test_resuming_mid_epoch_continues_the_same_order(order):
    targets = torch.arange(50) % 3
    fn = random_order(50) if order == "random" else class_balanced_order(targets, world_size=2)
    s = ResumableSampler(fn, 50, 5, seed=3, rank=1, world_size=2)
    s.set_epoch(4)
    full = list(s)
    for k in range(0, 6):
        s.set_epoch(4, start_batch=k)
        assert list(s) == full[k * 5:] and len(s) == len(full) - k * 5


def test_class_balanced_sampler_is_balanced_per_rank_batch():
    targets = torch.cat([torch.zeros(500), torch.arange(100) % 4 + 1]).long()  # class 0 is 5x over-represented
    for rank in range(2):
        s = ResumableSampler(class_balanced_order(targets, world_size=2), len(targets), 20, seed=0, rank=rank,
                             world_size=2)
        s.set_epoch(0)
        batches = torch.tensor([i for _, i in s]).reshape(-1, 20)
        for b in batches:
            assert torch.bincount(targets[b], minlength=5).tolist() == [4] * 5


def test_augmentation_depends_on_seed_epoch_index_only():
    ds = SeededDataset(SyntheticImages(8, size=(1, 8, 8)), PadCropFlip(2), seed=0)
    a = ds[(3, 5)][0]
    torch.rand(100)  # the process RNG moving on changes nothing
    state = torch.random.get_rng_state()
    assert torch.equal(a, ds[(3, 5)][0])
    assert torch.equal(state, torch.random.get_rng_state())  # and augmentation leaves it untouched
    assert not all(torch.equal(ds[(e, 5)][0], a) for e in range(4, 9))


def test_build_synthetic_loader_normalises_on_device():
    data = build_data(load_config(None, ["data.dataset=synthetic", "data.workers=0", "data.batch_size=8"]), 0, 1)
    x, y = next(iter(data.train_loader))
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32) and y.dtype == torch.int64
    assert abs(x.mean().item()) < 1.5
    assert len(data.val_loader.loader.sampler) == 256


def test_eval_sampler_counts_every_image_once():
    parts = [list(EvalSampler(10, r, 3)) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(10))


@pytest.fixture
def image_folder(tmp_path):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split, per_class in (("train", 6), ("val", 2)):
        for c, name in enumerate(("cat", "dog", "owl")):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(per_class * (c + 1)):  # unbalanced classes
                pixels = torch.randint(0, 255, (40 + i, 48, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return tmp_path


def test_imagefolder_through_timm_with_eval_resize_and_centre_crop(image_folder):
    cfg = load_config("senet-paper", [f"data.root={image_folder}", "data.workers=0", "data.batch_size=4",
                                      "data.input_size=[3, 32, 32]", "model.name=cifar_resnet8"])
    data = build_data(cfg, 0, 1)
    assert data.num_classes == 3 and data.num_train == 36 and data.num_val == 12
    x, y = next(iter(data.train_loader))
    assert x.shape == (4, 3, 32, 32)
    val_tf = data.val_loader.loader.dataset.transform
    names = [type(t).__name__ for t in val_tf.transforms]
    assert names[:2] == ["Resize", "CenterCrop"] and val_tf.transforms[0].size == 36  # 32 / 0.875 -> 36, crop 32
    train_tf = data.train_loader.loader.dataset.transform
    assert [type(t).__name__ for t in train_tf.transforms][:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    # mean subtraction only (std 1): a mid-grey image maps to 0.5 - mean
    assert data.std == (1.0, 1.0, 1.0)


def test_imagefolder_errors_name_the_directory(tmp_path):
    cfg = load_config(None, ["data.dataset=imagefolder", f"data.root={tmp_path}"])
    with pytest.raises(DataError, match=f"imagefolder: .*{tmp_path}"):
        build_data(cfg, 0, 1)


def test_every_config_dataset_has_a_loader():
    import typing
    from trainers.config import DataConfig
    from trainers.data.build import DATASETS
    assert set(typing.get_args(typing.get_type_hints(DataConfig)["dataset"])) == set(DATASETS)
