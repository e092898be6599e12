"""The models b3 takes, and the built-in registry: one decorator registers a model under its
function's name.

`get_model_spec(name)` resolves every way of naming a model (built-in, entry point, import path,
timm; see model_sources) and `create_model(name, ...)` builds one; `list_models("res*")` takes
wildcards.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torchvision import models as tv

from b3core.errors import B3Error
from b3core.spec.step import StepSpec, shape_dims
from b3core.workloads.user_code import (
    TRACEBACK_HINT,
    call_with_declared,
    first_line,
    is_import_path,
)

DEFAULT_INPUT_SHAPE = (3, 224, 224)
DEFAULT_NUM_CLASSES = 10


@dataclass(frozen=True)
class ModelInput:
    """What one step feeds the model: a sample's shape and dtype, and the class count of its
    targets (integer class ids, one per sample)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    num_classes: int = DEFAULT_NUM_CLASSES
    vocab_size: int | None = None  # token ids lie in [0, vocab_size) when dtype is int64

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3 and self.dtype == "float32"


@dataclass(frozen=True)
class ModelSpec:
    """What b3 knows about a model, whatever its origin: how to build it, what it eats, and
    where it came from (recorded with every result)."""

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE
    num_classes: int = DEFAULT_NUM_CLASSES
    input_dtype: str = "float32"
    vocab_size: int | None = None
    min_image_size: int = 1
    image_size_multiple: int = 1
    resizable: bool = True
    origin: str = "built-in"
    package: str | None = None  # the distribution that provides it (entry points, timm)
    version: str | None = None
    description: str = ""

    @property
    def image_size(self) -> int | None:
        return self.input_shape[-1] if len(self.input_shape) == 3 else None

    def check_image_size(self, image_size: int) -> int:
        if self.image_size is None:
            shape = "x".join(map(str, self.input_shape))
            raise B3Error(f"model {self.name} takes {shape} input, not images: use --input-shape")
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

    def resolve_input(
        self,
        *,
        image_size: int | None = None,
        input_shape: tuple[int, ...] | None = None,
        input_dtype: str | None = None,
        vocab_size: int | None = None,
        num_classes: int | None = None,
    ) -> ModelInput:
        """The model's own input, with what the user overrode."""
        if input_shape is not None:
            shape = tuple(input_shape)
        elif image_size is not None:
            size = self.check_image_size(image_size)
            shape = (self.input_shape[0], size, size)
        else:
            shape = self.input_shape
        dtype = input_dtype or self.input_dtype
        vocab = vocab_size or self.vocab_size
        if dtype == "int64" and vocab is None:
            raise B3Error(f"model {self.name} takes int64 token ids: give --vocab-size")
        classes = self.num_classes if num_classes is None else num_classes
        if classes < 1:
            raise B3Error(f"num_classes must be at least 1, got {classes}")
        return ModelInput(shape, dtype, classes, vocab if dtype == "int64" else None)

    def build(self, model_input: ModelInput) -> nn.Module:
        """The model for this input, randomly initialised; the factory gets the keyword
        arguments it declares among num_classes, image_size, input_shape and vocab_size."""
        arguments = {
            "num_classes": model_input.num_classes,
            "image_size": model_input.shape[-1] if len(model_input.shape) == 3 else None,
            "input_shape": model_input.shape,
            "vocab_size": model_input.vocab_size,
        }
        # a **kwargs factory (torchvision's, timm's) gets num_classes only: its kwargs go on to
        # the model's constructor, which knows nothing of image sizes
        to_any = ("num_classes",)
        if self.origin == "built-in":
            model = call_with_declared(self.builder, arguments, to_any)
        else:
            try:
                model = call_with_declared(self.builder, arguments, to_any)
            except B3Error:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever the user's factory raised
                raise B3Error(
                    f"model {self.name}'s factory failed ({type(exc).__name__}: "
                    f"{first_line(exc)}); {TRACEBACK_HINT}"
                ) from exc
        if not isinstance(model, nn.Module):
            raise B3Error(
                f"model {self.name} returned a {type(model).__name__}, not a torch.nn.Module"
            )
        return model


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    *,
    image_size: int,
    num_classes: int = DEFAULT_NUM_CLASSES,
    min_image_size: int = 32,
    image_size_multiple: int = 1,
    resizable: bool = True,
):
    """Register a built-in builder `fn(num_classes, image_size) -> nn.Module` under its name."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[builder.__name__] = ModelSpec(
            name=builder.__name__,
            builder=builder,
            input_shape=(3, image_size, image_size),
            num_classes=num_classes,
            min_image_size=min_image_size,
            image_size_multiple=image_size_multiple,
            resizable=resizable,
            description=first_doc_line(builder),
        )
        return builder

    return decorate


def first_doc_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return doc[0] if doc else ""


def list_models(pattern: str = "*") -> list[str]:
    """Built-in models and those that installed packages add (entry points in b3.models)."""
    from b3core.workloads.model_sources import entry_point_names

    names = set(_REGISTRY) | set(entry_point_names())
    return sorted(name for name in names if fnmatch.fnmatch(name, pattern))


def get_model_spec(name: str) -> ModelSpec:
    """Any model b3 takes: a built-in or entry-point name, `package.module:function`, or
    `timm/NAME`."""
    from b3core.workloads import model_sources

    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(model_sources.TIMM_PREFIX):
        return model_sources.timm_spec(name)
    if is_import_path(name):
        return model_sources.import_path_spec(name)
    found = model_sources.entry_point_spec(name)
    if found is not None:
        return found
    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `b3 models`"
    raise B3Error(f"unknown model {name!r}{hint}") from None


def create_model(
    name: str,
    num_classes: int | None = None,
    image_size: int | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> nn.Module:
    """Build a randomly initialised model (b3 never downloads weights)."""
    spec = get_model_spec(name)
    model_input = spec.resolve_input(
        image_size=image_size, input_shape=input_shape, num_classes=num_classes
    )
    return spec.build(model_input)


def step_model(spec: StepSpec) -> tuple[ModelSpec, ModelInput]:
    """The model a step names, and the input it feeds it."""
    model = get_model_spec(spec.model)
    model_input = model.resolve_input(
        image_size=spec.image_size,
        input_shape=shape_dims(spec.input_shape) if spec.input_shape else None,
        input_dtype=spec.input_dtype,
        vocab_size=spec.vocab_size,
        num_classes=spec.num_classes,
    )
    return model, model_input


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


@register_model(image_size=32, min_image_size=8, image_size_multiple=2)
def small_bn_cnn(num_classes: int, image_size: int) -> nn.Module:
    """Two conv-BatchNorm-ReLU blocks, global average pooling and a linear head: a small CNN
    with BatchNorm (for Ghost BatchNorm) that trains on any image of 8x8 and up (b3 converge)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, kernel_size=3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
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
