"""What b3 knows about a model, whatever its origin: how to build it and what it eats. The
registry (models) and the outside sources (model_sources) both make these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from b3core.errors import B3Error
from b3core.workloads.info import CAUSAL_LM, CLASSIFICATION, tokens_per_sample
from b3core.workloads.user_code import TRACEBACK_HINT, call_with_declared, first_line

DEFAULT_INPUT_SHAPE = (3, 224, 224)
DEFAULT_NUM_CLASSES = 10


@dataclass(frozen=True)
class ModelInput:
    """What one step feeds the model: a sample's shape and dtype, and its targets (a class id
    per sample, or for a causal language model the next token at every position)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    num_classes: int = DEFAULT_NUM_CLASSES
    vocab_size: int | None = None  # token ids lie in [0, vocab_size) when dtype is int64
    task: str = CLASSIFICATION

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3 and self.dtype == "float32"

    @property
    def tokens_per_sample(self) -> int | None:
        return tokens_per_sample(self.shape, self.dtype)


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
    task: str = CLASSIFICATION
    context_size: int | None = None  # the longest sequence a sequence model takes
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
            use = "--seq-len" if self.takes_tokens else "--input-shape"
            raise B3Error(f"model {self.name} takes {shape} input, not images: use {use}")
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

    @property
    def takes_tokens(self) -> bool:
        return tokens_per_sample(self.input_shape, self.input_dtype) is not None

    def check_seq_len(self, seq_len: int, input_dtype: str | None) -> int:
        if not (self.takes_tokens or input_dtype == "int64"):
            shape = "x".join(map(str, self.input_shape))
            raise B3Error(
                f"model {self.name} takes {shape} {self.input_dtype} input, not token sequences: "
                "--seq-len needs a sequence model (see `b3 models`)"
            )
        if self.context_size is not None and seq_len > self.context_size:
            raise B3Error(
                f"--seq-len {seq_len} is longer than model {self.name}'s context of "
                f"{self.context_size} tokens"
            )
        return seq_len

    def resolve_input(
        self,
        *,
        image_size: int | None = None,
        seq_len: int | None = None,
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
        elif seq_len is not None:
            shape = (self.check_seq_len(seq_len, input_dtype),)
        else:
            shape = self.input_shape
        dtype = input_dtype or self.input_dtype
        vocab = vocab_size or self.vocab_size
        if dtype == "int64" and vocab is None:
            raise B3Error(f"model {self.name} takes int64 token ids: give --vocab-size")
        classes = self.num_classes if num_classes is None else num_classes
        if self.task == CAUSAL_LM:  # a language model's classes are its next tokens
            if num_classes is not None:
                raise B3Error(
                    f"model {self.name} predicts tokens: give --vocab-size, not --num-classes"
                )
            classes = vocab
        if classes < 1:
            raise B3Error(f"num_classes must be at least 1, got {classes}")
        return ModelInput(shape, dtype, classes, vocab if dtype == "int64" else None, self.task)

    def build(self, model_input: ModelInput) -> nn.Module:
        """The model for this input, randomly initialised; the factory gets the keyword
        arguments it declares among num_classes, image_size, input_shape and vocab_size."""
        arguments = {
            "num_classes": model_input.num_classes,
            "image_size": model_input.shape[-1] if len(model_input.shape) == 3 else None,
            "input_shape": model_input.shape,
            "vocab_size": model_input.vocab_size,
            "context_size": self.context_size,
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
        check_vocabulary(self.name, model, model_input.vocab_size)
        return model


def check_vocabulary(name: str, model: nn.Module, vocab_size: int | None) -> None:
    """Token ids drawn below vocab_size must index the model's token embedding (its first)."""
    embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if vocab_size is not None and embedding is not None and embedding.num_embeddings < vocab_size:
        raise B3Error(
            f"vocabulary mismatch: model {name}'s token embedding has {embedding.num_embeddings} "
            f"entries, fewer than the {vocab_size} token ids it would be fed (--vocab-size)"
        )


def first_doc_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return doc[0] if doc else ""
