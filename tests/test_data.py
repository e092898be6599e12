import pytest
import torch

from b3core.data import cifar10_splits, make_loader, synthetic_batch, synthetic_splits
from b3core.errors import B3Error


def test_default_synthetic_splits_have_b3s_shapes_and_sizes():
    splits = synthetic_splits()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45_000, 5_000, 10_000)
    image, label = splits.train[0]
    assert image.shape == (3, 224, 224) and 0 <= label < 10


def test_smaller_train_size_keeps_b3s_proportions():
    splits = synthetic_splits(train_size=900, image_size=32)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (900, 100, 200)


def test_synthetic_images_are_reproducible_per_index():
    a, b = (
        synthetic_splits(train_size=10, image_size=8),
        synthetic_splits(train_size=10, image_size=8),
    )
    assert torch.equal(a.train[3][0], b.train[3][0])
    assert not torch.equal(a.train[3][0], a.train[4][0])


def test_training_loader_drops_the_last_partial_batch_like_b3():
    ds = synthetic_splits(train_size=100, image_size=8).train
    assert sum(len(y) for _, y in make_loader(ds, 32, train=True)) == 96
    assert sum(len(y) for _, y in make_loader(ds, 32, train=False)) == 100


def test_synthetic_batch_lives_on_the_device_in_the_asked_layout():
    x, y = synthetic_batch(4, (3, 16, 16), 10, torch.device("cpu"), channels_last=True)
    assert x.shape == (4, 3, 16, 16) and y.shape == (4,)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(B3Error, match="does not exist"):
        cifar10_splits(tmp_path / "nope")


def test_folder_without_cifar10_is_a_clear_error(tmp_path):
    with pytest.raises(B3Error, match="no CIFAR-10"):
        cifar10_splits(tmp_path)
