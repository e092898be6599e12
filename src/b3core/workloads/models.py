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

from torch import nn

from b3core.errors import B3Error
from b3core.spec.step import StepSpec, shape_dims
from b3core.workloads import hf_models, model_sources
from b3core.workloads.info import CAUSAL_LM, CLASSIFICATION
from b3core.workloads.model_spec import (  # noqa: F401 - the models' public names
    DEFAULT_INPUT_SHAPE,
    DEFAULT_NUM_CLASSES,
    ModelInput,
    ModelSpec,
    first_doc_line,
)
from b3core.workloads.transformer import CausalLM, EncoderClassifier
from b3core.workloads.user_code import is_import_path

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
    return _registrar(
        input_shape=(3, image_size, image_size),
        num_classes=num_classes,
        min_image_size=min_image_size,
        image_size_multiple=image_size_multiple,
        resizable=resizable,
    )


def register_sequence_model(
    *,
    task: str,
    seq_len: int,
    context_size: int,
    vocab_size: int,
    num_classes: int = DEFAULT_NUM_CLASSES,
):
    """Register a built-in builder of a model over token ids, `fn(vocab_size, context_size,
    num_classes) -> nn.Module`, that takes sequences of `seq_len` tokens unless told otherwise
    (up to `context_size`)."""
    return _registrar(
        input_shape=(seq_len,),
        num_classes=num_classes,
        input_dtype="int64",
        vocab_size=vocab_size,
        task=task,
        context_size=context_size,
        resizable=False,
    )


def _registrar(**spec_fields):
    """The decorator that registers a builder under its name, with these ModelSpec fields and
    its docstring's first line as its description."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[builder.__name__] = ModelSpec(
            name=builder.__name__,
            builder=builder,
            description=first_doc_line(builder),
            **spec_fields,
        )
        return builder

    return decorate


def list_models(pattern: str = "*") -> list[str]:
    """Built-in models and those that installed packages add (entry points in b3.models)."""
    names = set(_REGISTRY) | set(model_sources.entry_point_names())
    return sorted(name for name in names if fnmatch.fnmatch(name, pattern))


def get_model_spec(name: str) -> ModelSpec:
    """Any model b3 takes: a built-in or entry-point name, `package.module:function`,
    `timm/NAME`, or `hf/NAME` (a transformers model type)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(model_sources.TIMM_PREFIX):
        return model_sources.timm_spec(name)
    if name.startswith(hf_models.HF_PREFIX):
        return hf_models.hf_spec(name)
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
        seq_len=spec.seq_len,
        input_shape=shape_dims(spec.input_shape) if spec.input_shape else None,
        input_dtype=spec.input_dtype,
        vocab_size=spec.vocab_size,
        num_classes=spec.num_classes,
    )
    return model, model_input


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- torchvision models: random init, classifier sized to the class count -------------------


def _tv():
    """torchvision's models, imported when one is built (the import costs a second)."""
    from torchvision import models

    return models


@register_model(image_size=224)
def mobilenet_v3_large(num_classes: int, image_size: int) -> nn.Module:
    """torchvision MobileNetV3-large, B3's model (classifier ends in Linear(1280, classes))."""
    return _tv().mobilenet_v3_large(weights=None, num_classes=num_classes)


@register_model(image_size=224)
def mobilenet_v3_small(num_classes: int, image_size: int) -> nn.Module:
    """torchvision MobileNetV3-small."""
    return _tv().mobilenet_v3_small(weights=None, num_classes=num_classes)


@register_model(image_size=224)
def resnet18(num_classes: int, image_size: int) -> nn.Module:
    """torchvision ResNet-18."""
    return _tv().resnet18(weights=None, num_classes=num_classes)


@register_model(image_size=224)
def resnet50(num_classes: int, image_size: int) -> nn.Module:
    """torchvision ResNet-50."""
    return _tv().resnet50(weights=None, num_classes=num_classes)


@register_model(image_size=224, image_size_multiple=16)
def vit_b_16(num_classes: int, image_size: int) -> nn.Module:
    """torchvision ViT-B/16, a transformer (86M parameters)."""
    return _tv().vit_b_16(weights=None, num_classes=num_classes, image_size=image_size)


@register_model(image_size=32, min_image_size=8, image_size_multiple=4)
def vit_tiny(num_classes: int, image_size: int) -> nn.Module:
    """A small ViT (patch 4, 4 layers, width 192) that runs quickly on CPU."""
    return _tv().VisionTransformer(
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
    features = nn.Sequential(nn.Conv2d(3, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    model = nn.Sequential(features, nn.Flatten(), nn.Linear(16 * half * half, num_classes))
    model.b3_checkpoint_blocks = (features,)  # its one block (workloads/checkpointing.py)
    return model


def _conv_block(c_in: int, c_out: int, activation: nn.Module, *after: nn.Module) -> nn.Sequential:
    """Conv 3x3, BatchNorm, the activation and what follows: one of a CNN's blocks."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.BatchNorm2d(c_out), activation, *after
    )


@register_model(image_size=32, min_image_size=8, image_size_multiple=2)
def small_bn_cnn(num_classes: int, image_size: int) -> nn.Module:
    """Two conv-BatchNorm-ReLU blocks, global average pooling and a linear head: a small CNN
    with BatchNorm (for Ghost BatchNorm) that trains on any image of 8x8 and up (b3 converge)."""
    return nn.Sequential(
        _conv_block(3, 32, nn.ReLU(), nn.MaxPool2d(2)),
        _conv_block(32, 64, nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


@register_model(image_size=256)
def tanh_cnn(num_classes: int, image_size: int) -> nn.Module:
    """The 2019 blog's CNN for 256x256x3: a conv, four (conv, BN, tanh, max-pool) blocks, 3 FC."""
    widths = [32, 32, 64, 128, 128]
    stem = nn.Conv2d(3, widths[0], kernel_size=3, padding=1)  # built first: a seed's weights
    blocks = [
        _conv_block(c_in, c_out, nn.Tanh(), nn.MaxPool2d(2))
        for c_in, c_out in zip(widths, widths[1:])
    ]
    return nn.Sequential(
        stem,
        *blocks,
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(widths[-1] * 16, 512),
        nn.Tanh(),
        nn.Linear(512, 128),
        nn.Tanh(),
        nn.Linear(128, num_classes),
    )


# --- sequence models: b3's own transformer (workloads/transformer.py) -------------------------


@register_sequence_model(task=CAUSAL_LM, seq_len=128, context_size=1024, vocab_size=8192)
def gpt_small(vocab_size: int, context_size: int) -> nn.Module:
    """A GPT-style causal language model (4 layers, width 128, 4 heads; next-token loss)."""
    return CausalLM(vocab_size=vocab_size, context_size=context_size, width=128, depth=4, heads=4)


@register_sequence_model(task=CAUSAL_LM, seq_len=256, context_size=2048, vocab_size=16384)
def gpt_medium(vocab_size: int, context_size: int) -> nn.Module:
    """A GPT-style causal language model (6 layers, width 256, 8 heads; next-token loss)."""
    return CausalLM(vocab_size=vocab_size, context_size=context_size, width=256, depth=6, heads=8)


@register_sequence_model(task=CLASSIFICATION, seq_len=128, context_size=512, vocab_size=8192)
def bert_small(vocab_size: int, context_size: int, num_classes: int) -> nn.Module:
    """A BERT-style encoder classifier (4 layers, width 128, 4 heads; mean-pooled features)."""
    return EncoderClassifier(
        num_classes, vocab_size=vocab_size, context_size=context_size, width=128, depth=4, heads=4
    )


def has_batch_dependent_layers(model: nn.Module) -> bool:
    """BatchNorm sees only the micro-batch, so accumulation is not a true large batch for it."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
