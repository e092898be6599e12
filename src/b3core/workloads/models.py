"""The model registry: one decorator registers a model under its function's name.

`create_model(name, **kwargs)` is the one entry point; `list_models("res*")` takes wildcards.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torchvision import models as tv

from b3core.errors import B3Error


@dataclass(frozen=True)
class ModelSpec:
    """What b3 knows about a registered model: how to build it and what it eats."""

    name: str
    builder: Callable[..., nn.Module]
    image_size: int
    num_classes: int = 10
    min_image_size: int = 32
    image_size_multiple: int = 1
    resizable: bool = True
    description: str = ""

    def check_image_size(self, image_size: int) -> int:
        if image_size == self.image_size:
            return image_size
        if not self.resizable:
            raise B3Error(f"model {self.name} only takes {self.image_size}x{self.image_size} input")
        if image_size < self.min_image_size or image_size % self.image_size_multiple:
            rule = f"at least {self.min_image_size}"
            if self.image_size_multiple > 1:
                rule += f" and a multiple of {self.image_size_multiple}"
            raise B3Error(f"model {self.name} needs an image size {rule}, got {image_size}")
        return image_size

    def input_shape(self, image_size: int | None = None) -> tuple[int, int, int]:
        size = self.image_size if image_size is None else image_size
        return (3, size, size)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    *,
    image_size: int,
    num_classes: int = 10,
    min_image_size: int = 32,
    image_size_multiple: int = 1,
    resizable: bool = True,
):
    """Register a builder `fn(num_classes, image_size) -> nn.Module` under its own name."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = (builder.__doc__ or "").strip().splitlines()
        _REGISTRY[builder.__name__] = ModelSpec(
            name=builder.__name__,
            builder=builder,
            image_size=image_size,
            num_classes=num_classes,
            min_image_size=min_image_size,
            image_size_multiple=image_size_multiple,
            resizable=resizable,
            description=doc[0] if doc else "",
        )
        return builder

    return decorate


def list_models(pattern: str = "*") -> list[str]:
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `b3 models`"
        raise B3Error(f"unknown model {name!r}{hint}") from None


def create_model(
    name: str, num_classes: int | None = None, image_size: int | None = None, **kwargs
) -> nn.Module:
    """Build a randomly initialised model (b3 never downloads weights)."""
    spec = get_model_spec(name)
    classes = spec.num_classes if num_classes is None else num_classes
    if classes < 1:
        raise B3Error(f"num_classes must be at least 1, got {classes}")
    size = spec.check_image_size(spec.image_size if image_size is None else image_size)
    return spec.builder(num_classes=classes, image_size=size, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- torchvision models: random init, classifier sized to the class count -------------------


@register_model(image_size=224)
def mobilenet_v3_large(num_classes: int, image_size: int) -> nn.Module:
    """torchvision MobileNetV3-large, B3's model (classifier ends in Linear(1280, classes))."""
    return tv.mobilenet_v3_large(weights=None, num_classes=num_classes)


@register_model(image_size=224)
def mobilenet_v3_small(num_classes: int, image_size: int) -> nn.Module:
    """torchvision MobileNetV3-small."""
    return tv.mobilenet_v3_small(weights=None, num_classes=num_classes)


@register_model(image_size=224)
def resnet18(num_classes: int, image_size: int) -> nn.Module:
    """torchvision ResNet-18."""
    return tv.resnet18(weights=None, num_classes=num_classes)


@register_model(image_size=224)
def resnet50(num_classes: int, image_size: int) -> nn.Module:
    """torchvision ResNet-50."""
    return tv.resnet50(weights=None, num_classes=num_classes)


@register_model(image_size=224, image_size_multiple=16)
def vit_b_16(num_classes: int, image_size: int) -> nn.Module:
    """torchvision ViT-B/16, a transformer (86M parameters)."""
    return tv.vit_b_16(weights=None, num_classes=num_classes, image_size=image_size)


@register_model(image_size=32, min_image_size=8, image_size_multiple=4)
def vit_tiny(num_classes: int, image_size: int) -> nn.Module:
    """A small ViT (patch 4, 4 layers, width 192) that runs quickly on CPU."""
    return tv.VisionTransformer(
        image_size=image_size,
        patch_size=4,
        num_layers=4,
        num_heads=3,
        hidden_dim=192,
        mlp_dim=768,
        num_classes=num_classes,
    )


# --- the seed material's small CNNs ----------------------------------------------------------


@register_model(image_size=32, min_image_size=2, image_size_multiple=2)
def simple_cnn(num_classes: int, image_size: int) -> nn.Module:
    """The tutorial's CNN: Conv(3,16,3), ReLU, MaxPool(2), Linear(16*16*16, classes) at 32x32."""
    half = image_size // 2
    return nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * half * half, num_classes),
    )


@register_model(image_size=256)
def tanh_cnn(num_classes: int, image_size: int) -> nn.Module:
    """The 2019 blog's CNN for 256x256x3: a conv, four (conv, BN, tanh, max-pool) blocks, 3 FC."""
    widths = [32, 32, 64, 128, 128]
    blocks: list[nn.Module] = [nn.Conv2d(3, widths[0], kernel_size=3, padding=1)]
    for c_in, c_out in zip(widths, widths[1:]):
        blocks += [
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.Tanh(),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(
        *blocks,
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(widths[-1] * 16, 512),
        nn.Tanh(),
        nn.Linear(512, 128),
        nn.Tanh(),
        nn.Linear(128, num_classes),
    )


def has_batch_dependent_layers(model: nn.Module) -> bool:
    """BatchNorm sees only the micro-batch, so accumulation is not a true large batch for it."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
