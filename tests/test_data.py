import json
import pickle

import numpy as np
import pytest
import torch
import torchvision

from b3core.errors import B3Error
from b3core.workloads.data import cifar10_splits, make_loader, synthetic_batch, synthetic_splits
from b3core.workloads.models import ModelInput

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

IMAGES_8 = ModelInput((3, 8, 8))


def test_default_synthetic_splits_have_b3s_shapes_and_sizes():
    splits = synthetic_splits()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45_000, 5_000, 10_000)
    image, label = splits.train[0]
    assert image.shape == (3, 224, 224) and 0 <= label < 10


def test_smaller_train_size_keeps_b3s_proportions():
    splits = synthetic_splits(train_size=900, model_input=ModelInput((3, 32, 32)))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (900, 100, 200)


def test_synthetic_images_are_reproducible_per_index():
    a, b = (
        synthetic_splits(train_size=10, model_input=IMAGES_8),
        synthetic_splits(train_size=10, model_input=IMAGES_8),
    )
    assert torch.equal(a.train[3][0], b.train[3][0])
    assert not torch.equal(a.train[3][0], a.train[4][0])


def test_training_loader_drops_the_last_partial_batch_like_b3():
    ds = synthetic_splits(train_size=100, model_input=IMAGES_8).train
    assert sum(len(y) for _, y in make_loader(ds, 32, train=True)) == 96
    assert sum(len(y) for _, y in make_loader(ds, 32, train=False)) == 100


def test_synthetic_batch_lives_on_the_device_in_the_asked_layout():
    x, y = synthetic_batch(4, ModelInput((3, 16, 16)), torch.device("cpu"), channels_last=True)
    assert x.shape == (4, 3, 16, 16) and y.shape == (4,)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_token_inputs_are_int64_ids_below_the_vocabulary_size():
    tokens = ModelInput((12,), dtype="int64", num_classes=3, vocab_size=5)
    x, y = synthetic_batch(64, tokens, torch.device("cpu"))
    assert x.dtype == torch.int64 and x.shape == (64, 12)
    assert x.min() >= 0 and x.max() == 4 and y.max() == 2
    sample, label = synthetic_splits(train_size=4, model_input=tokens).train[0]
    assert sample.dtype == torch.int64 and sample.shape == (12,) and 0 <= label < 3


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(B3Error, match="does not exist"):
        cifar10_splits(tmp_path / "nope")


def test_folder_without_cifar10_is_a_clear_error(tmp_path):
    with pytest.raises(B3Error, match="no CIFAR-10"):
        cifar10_splits(tmp_path)


def write_tiny_cifar10(root, per_batch=20):
    """CIFAR-10 in torchvision's on-disk layout, a few random images per file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
            "labels": rng.integers(0, 10, per_batch).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [str(i) for i in range(10)]})
    )


@pytest.fixture
def tiny_cifar10(tmp_path, monkeypatch):
    # torchvision checks each file's MD5 against the real data set's; these files are not it
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    write_tiny_cifar10(tmp_path)
    return tmp_path


def test_cifar10_from_disk_gets_b3s_split_and_transforms(tiny_cifar10):
    splits = cifar10_splits(tiny_cifar10, image_size=32, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 20)
    assert not set(splits.train.indices) & set(splits.val.indices)  # 9:1, as 45,000 / 5,000
    image, label = splits.val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and 0 <= label < 10
    assert len(cifar10_splits(tiny_cifar10, image_size=32, train_size=30).train) == 30


def test_b3_run_trains_and_times_inference_on_cifar10_from_disk(tiny_cifar10, tmp_path, capsys):
    from b3core.cli import main

    argv = "run --dataset cifar10 --model simple_cnn --image-size 32 --batch_size 16"
    out_json = tmp_path / "run.json"
    code = main(
        [*argv.split(), "--data-dir", str(tiny_cifar10), "--device", "cpu", "--json", str(out_json)]
    )
    assert code == 0, capsys.readouterr()
    assert "cifar10 data" in capsys.readouterr().out
    (run,) = json.loads(out_json.read_text())["result"]["runs"]
    # 90 training images in batches of 16, the last partial one dropped as in B3; 10 + 20 inferred
    assert (run["train"]["samples"], run["train"]["steps"]) == (80, 5)
    assert run["inference"]["samples"] == 30
