"""Data for b3: synthetic images with B3's shapes (the default) or CIFAR-10 from disk.

Nothing here downloads: a missing data folder is a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset, random_split

from b3core.errors import B3Error

# B3's split: CIFAR-10's 50,000 training images as 45,000 train / 5,000 validation, plus test.
B3_TRAIN, B3_VAL, B3_TEST = 45_000, 5_000, 10_000
B3_IMAGE_SIZE = 224
B3_RESIZE = 256


class SyntheticImages(Dataset):
    """Random images and labels, reproducible per index, generated on the fly (no memory cost)."""

    def __init__(self, size: int, image_size: int, num_classes: int = 10, seed: int = 0):
        self.size, self.image_size, self.num_classes, self.seed = (
            size,
            image_size,
            num_classes,
            seed,
        )

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = torch.rand(3, self.image_size, self.image_size, generator=g)
        label = int(torch.randint(self.num_classes, (1,), generator=g))
        return image, label


@dataclass(frozen=True)
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


def synthetic_splits(
    train_size: int = B3_TRAIN,
    image_size: int = B3_IMAGE_SIZE,
    num_classes: int = 10,
    seed: int = 0,
) -> Splits:
    """B3's three splits; a smaller train_size shrinks validation and test in B3's proportions."""
    if train_size < 1:
        raise B3Error(f"--train-size must be at least 1, got {train_size}")
    val_size = max(1, round(train_size * B3_VAL / B3_TRAIN))
    test_size = max(1, round(train_size * B3_TEST / B3_TRAIN))
    return Splits(
        SyntheticImages(train_size, image_size, num_classes, seed),
        SyntheticImages(val_size, image_size, num_classes, seed + 1),
        SyntheticImages(test_size, image_size, num_classes, seed + 2),
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


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """B3's loaders: training shuffles and drops the last partial batch, evaluation keeps it."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed) if train else None,
    )


def synthetic_batch(
    batch_size: int,
    input_shape: tuple[int, ...],
    num_classes: int,
    device: torch.device,
    *,
    channels_last: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed batch already on the device, so that step timings contain no data loading."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, *input_shape, generator=g)
    labels = torch.randint(num_classes, (batch_size,), generator=g)
    images = images.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device)
