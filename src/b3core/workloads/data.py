"""Data for b3: synthetic samples of the model's input (B3's images by default), CIFAR-10 or
an image folder from disk, or scikit-learn's bundled digits (real images, offline everywhere).

Nothing here downloads: a missing data folder is a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    Subset,
    TensorDataset,
    random_split,
)

from b3core.errors import B3Error
from b3core.workloads.info import CAUSAL_LM
from b3core.workloads.models import ModelInput

# B3's split: CIFAR-10's 50,000 training images as 45,000 train / 5,000 validation, plus test.
B3_TRAIN, B3_VAL, B3_TEST = 45_000, 5_000, 10_000
B3_IMAGE_SIZE = 224
B3_RESIZE = 256
B3_IMAGES = ModelInput((3, B3_IMAGE_SIZE, B3_IMAGE_SIZE))


class SyntheticSamples(Dataset):
    """Random samples of the model's input (images by default) and labels, reproducible per
    index, generated on the fly (no memory cost)."""

    def __init__(self, size: int, model_input: ModelInput, seed: int = 0):
        self.size, self.model_input, self.seed = size, model_input, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        inputs, targets = synthetic_examples(1, self.model_input, g)
        return inputs[0], targets[0] if targets.dim() > 1 else int(targets[0])


@dataclass(frozen=True)
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset | None = None


def synthetic_splits(
    train_size: int = B3_TRAIN,
    model_input: ModelInput = B3_IMAGES,
    seed: int = 0,
) -> Splits:
    """B3's three splits; a smaller train_size shrinks validation and test in B3's proportions."""
    if train_size < 1:
        raise B3Error(f"--train-size must be at least 1, got {train_size}")
    val_size = max(1, round(train_size * B3_VAL / B3_TRAIN))
    test_size = max(1, round(train_size * B3_TEST / B3_TRAIN))
    return Splits(
        SyntheticSamples(train_size, model_input, seed),
        SyntheticSamples(val_size, model_input, seed + 1),
        SyntheticSamples(test_size, model_input, seed + 2),
    )


def cifar10_splits(
    data_dir: str | Path,
    image_size: int = B3_IMAGE_SIZE,
    train_size: int | None = None,
    seed: int = 0,
) -> Splits:
    """CIFAR-10 from torchvision's on-disk layout, with B3's transforms and split."""
    from torchvision import datasets, transforms

    root = Path(data_dir)
    if not root.is_dir():
        raise B3Error(f"data folder {str(root)!r} does not exist (b3 never downloads data)")
    resize = round(image_size * B3_RESIZE / B3_IMAGE_SIZE)
    train_tf = transforms.Compose(
        [
            transforms.Resize((resize, resize)),
            transforms.RandomCrop(image_size),
            transforms.ToTensor(),
        ]
    )
    eval_tf = transforms.Compose(
        [
            transforms.Resize((resize, resize)),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
        ]
    )
    try:
        train_full = datasets.CIFAR10(root, train=True, transform=train_tf, download=False)
        val_full = datasets.CIFAR10(root, train=True, transform=eval_tf, download=False)
        test = datasets.CIFAR10(root, train=False, transform=eval_tf, download=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted."
        raise B3Error(f"no CIFAR-10 in torchvision's layout under {str(root)!r}: {exc}") from None
    # B3's 45,000/5,000 as fractions: exact on CIFAR-10, and a smaller copy splits alike
    fractions = [B3_TRAIN / (B3_TRAIN + B3_VAL), B3_VAL / (B3_TRAIN + B3_VAL)]
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = random_split(range(len(train_full)), fractions, generator=generator)
    train_indices = list(train_idx)[:train_size] if train_size else list(train_idx)
    return Splits(Subset(train_full, train_indices), Subset(val_full, list(val_idx)), test)


DIGITS_SIZE = 8  # scikit-learn's digits: 1,797 8x8 images of 0-9, grey levels 0-16
DIGITS_VAL_FRACTION = 0.2  # 1,437 train / 360 validation, stratified by class, split seed 0
VAL_FRACTION = 0.2  # an image folder without train/ and val/ subfolders: its split


def digits_splits(image_size: int | None = None) -> Splits:
    """scikit-learn's bundled digits as images for b3's models: grey levels scaled to [0, 1],
    repeated over 3 channels, resized (bilinear) to image_size when given; a fixed stratified
    80/20 split (DIGITS_VAL_FRACTION), the same for every seed."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).div(16.0).unsqueeze(1)
    images = images.expand(-1, 3, -1, -1)
    if image_size and image_size != DIGITS_SIZE:
        size = (image_size, image_size)
        images = torch.nn.functional.interpolate(images, size, mode="bilinear")
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train, val = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_VAL_FRACTION,
        stratify=digits.target,
        random_state=0,
    )
    return Splits(
        TensorDataset(images[train].contiguous(), labels[train]),
        TensorDataset(images[val].contiguous(), labels[val]),
    )


def image_folder_splits(data_dir: str | Path, image_size: int) -> Splits:
    """A torchvision ImageFolder (one subfolder per class): DIR/train and DIR/val when both
    exist, else DIR split VAL_FRACTION for validation with seed 0. Resized and center-cropped
    to image_size."""
    from torchvision import datasets, transforms

    root = Path(data_dir)
    if not root.is_dir():
        raise B3Error(f"data folder {str(root)!r} does not exist (b3 never downloads data)")
    tf = transforms.Compose(
        [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]
    )
    try:
        if (root / "train").is_dir() and (root / "val").is_dir():
            return Splits(
                datasets.ImageFolder(root / "train", tf), datasets.ImageFolder(root / "val", tf)
            )
        full = datasets.ImageFolder(root, tf)
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders, or no images in them
        raise B3Error(f"no images in ImageFolder's layout under {str(root)!r}: {exc}") from None
    generator = torch.Generator().manual_seed(0)
    train, val = random_split(full, [1 - VAL_FRACTION, VAL_FRACTION], generator=generator)
    return Splits(train, val)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """B3's loaders: training shuffles and drops the last partial batch, evaluation keeps it.
    Under data parallel each rank loads its own shard (DistributedSampler, as B3's Lightning
    DDP run did); call `loader.sampler.set_epoch(epoch)` before each training epoch."""
    sampler = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=train)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed) if train and sampler is None else None,
    )


def synthetic_examples(
    batch_size: int, model_input: ModelInput, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs of the model's shape (floats in [0, 1), or token ids below the vocabulary)
    and their targets: a class per sample, or for a causal language model the next token at
    every position, the ids shifted by one."""
    if model_input.task == CAUSAL_LM:
        length = model_input.shape[0]
        ids = torch.randint(model_input.vocab_size, (batch_size, length + 1), generator=generator)
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    shape = (batch_size, *model_input.shape)
    if model_input.dtype == "int64":
        inputs = torch.randint(model_input.vocab_size, shape, generator=generator)
    else:
        inputs = torch.rand(shape, generator=generator)
    return inputs, torch.randint(model_input.num_classes, (batch_size,), generator=generator)


def synthetic_batch(
    batch_size: int,
    model_input: ModelInput,
    device: torch.device,
    *,
    channels_last: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed batch already on the device, so that step timings contain no data loading."""
    inputs, targets = synthetic_examples(
        batch_size, model_input, torch.Generator().manual_seed(seed)
    )
    inputs = inputs.to(device)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, targets.to(device)
