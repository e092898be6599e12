"""What a step is, and how it is timed: the one declaration of their fields, defaults and choices.

Torch-free and registry-free, so that saved results load anywhere. Each field carries its
command-line form in its metadata; the CLI builds its options from these fields alone.
Whether the model exists, takes this image size, or runs on this device is checked when the
step is built (`b3core.workloads.build`), not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from b3core.errors import B3Error
from b3core.spec.validate import (  # noqa: F401 - parse_number: spec's users import it here
    parse_number,
    parse_positive,
    parse_positive_int,
    require_choice,
    require_positive_int,
)

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
MODES = ("train", "inference")
OPTIMIZERS = ("adam", "sgd")
# "blocked": k steps between two device syncs, the pipelined rate a training loop sees;
# "per-step": each step between two syncs, the latency distribution.
CLOCKS = ("blocked", "per-step")
PROFILES = ("quick", "b3", "full")  # the benchmark suites' case sets (suites/cases.py)
INPUT_DTYPES = ("float32", "int64")  # images and features, or token ids below a vocabulary size
# "blocks": each of the model's repeated blocks recomputed in backward; "all": the whole forward
CHECKPOINTING = ("none", "blocks", "all")
DATASETS = ("synthetic", "cifar10")  # what `b3 run` trains on; nothing is ever downloaded
MIN_WARMUP = 2  # cuDNN autotuning, allocator growth and Adam's lazily created state
DEFAULT_LR = 5e-4  # B3's Adam learning rate
DEFAULT_REPEATS = 10
# the ways to set one sample's shape: a step takes at most one
SAMPLE_SHAPES = {
    "--image-size": "image_size",
    "--seq-len": "seq_len",
    "--input-shape": "input_shape",
}


def parse_shape(text: str) -> str:
    """An input shape without the batch dimension, "3x224x224" or "128", in its canonical form."""
    if isinstance(text, (tuple, list)):
        text = "x".join(map(str, text))
    parts = str(text).strip().lower().replace("*", "x").split("x")
    try:
        dims = [int(part) for part in parts]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        raise B3Error(f"input shape must look like 3x224x224 or 128, got {text!r}")
    return "x".join(map(str, dims))


def shape_dims(shape: str) -> tuple[int, ...]:
    return tuple(int(part) for part in shape.split("x"))


def option(*flags: str, help: str, **argparse_kwargs) -> dict:
    """Field metadata: the option's flags (an underscore twin is added for each dashed one, as
    B3's own scripts spelled them), its help, and argparse settings (parse, choices, action)."""
    return {"cli": {"flags": flags, "help": help, **argparse_kwargs}}


class Record:
    """What spec records (StepSpec, Timing, CompareSettings) share: copies with changes, and a
    JSON form that loads what an earlier or later b3 wrote (unknown keys ignored, missing ones
    at their defaults)."""

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class StepSpec(Record):
    """One configuration to time. `batch_size` is the micro-batch; a training step processes
    `batch_size * accumulation_steps` samples in one optimizer update."""

    model: str = field(
        metadata=option(
            "--model",
            help="a model: a name from `b3 models` (built-in or an installed package's), "
            "package.module:function, timm/NAME, or hf/TYPE (a transformers model type)",
        )
    )
    batch_size: int = field(
        metadata=option("--batch-size", parse=parse_positive, help="samples per micro-batch")
    )
    precision: str = field(
        default="fp32",
        metadata=option("--precision", choices=PRECISIONS, help="fp16 uses a GradScaler"),
    )
    accumulation_steps: int = field(
        default=1,
        metadata=option(
            "--accumulation-steps", parse=parse_positive, help="micro-batches per optimizer step"
        ),
    )
    mode: str = field(
        default="train",
        metadata=option(
            "--inference",
            action="store_const",
            const="inference",
            help="time the inference step instead of the training step",
        ),
    )
    image_size: int | None = field(
        default=None,
        metadata=option(
            "--image-size", parse=parse_positive, help="override the model's input size"
        ),
    )
    seq_len: int | None = field(
        default=None,
        metadata=option(
            "--seq-len",
            parse=parse_positive,
            help="tokens per sequence for a sequence model (default: the model's own)",
        ),
    )
    num_classes: int | None = field(
        default=None,
        metadata=option("--num-classes", parse=parse_positive, help="override the model's classes"),
    )
    optimizer: str = field(
        default="adam", metadata=option("--optimizer", choices=OPTIMIZERS, help="the optimizer")
    )
    lr: float = field(
        default=DEFAULT_LR,
        metadata=option("--lr", "--learning-rate", parse=parse_number, help="learning rate"),
    )
    channels_last: bool = field(
        default=False, metadata=option("--channels-last", action="store_true", help="NHWC input")
    )
    activation_checkpointing: str = field(
        default="none",
        metadata=option(
            "--activation-checkpointing",
            choices=CHECKPOINTING,
            help="recompute activations in the backward pass instead of keeping them: "
            "blocks (each repeated block, e.g. ResNet's, a transformer's layers) or all "
            "(torch.utils.checkpoint, use_reentrant=False)",
        ),
    )
    compile: bool = field(
        default=False,
        metadata=option(
            "--compile", action="store_true", help="torch.compile (first call reported apart)"
        ),
    )
    cudnn_benchmark: bool = field(
        default=True,
        metadata=option(
            "--no-cudnn-benchmark",
            action="store_false",
            help="keep cuDNN's autotuner off (it is on by default on CUDA)",
        ),
    )
    device: str = field(
        default="auto",
        metadata=option("--device", help=f"one of {', '.join(DEVICE_CHOICES)}, e.g. cuda:1"),
    )

    input_shape: str | None = field(
        default=None,
        metadata=option(
            "--input-shape",
            parse=parse_shape,
            help="one sample's shape, e.g. 3x224x224 or 128 (default: the model's own)",
        ),
    )
    input_dtype: str | None = field(
        default=None,
        metadata=option(
            "--input-dtype",
            choices=INPUT_DTYPES,
            help="float32 inputs, or int64 token ids below --vocab-size (default: the model's)",
        ),
    )
    vocab_size: int | None = field(
        default=None,
        metadata=option(
            "--vocab-size", parse=parse_positive, help="token ids' range for int64 input"
        ),
    )
    loss: str | None = field(
        default=None,
        metadata=option(
            "--loss", help="module:function(outputs, targets) -> loss (default: cross-entropy)"
        ),
    )
    train_step: str | None = field(
        default=None,
        metadata=option(
            "--train-step",
            help="module:function, your own training step to time (see docs/own-model.md)",
        ),
    )

    def __post_init__(self) -> None:
        require_positive_int("batch size", self.batch_size)
        require_positive_int("accumulation steps", self.accumulation_steps)
        require_choice("mode", self.mode, MODES)
        require_choice("precision", self.precision, PRECISIONS)
        require_choice("optimizer", self.optimizer, OPTIMIZERS)
        require_choice("activation checkpointing", self.activation_checkpointing, CHECKPOINTING)
        if self.mode == "inference" and self.activation_checkpointing != "none":
            raise B3Error("--activation-checkpointing saves training memory; drop --inference")
        for name in ("image_size", "seq_len", "num_classes", "vocab_size"):
            if getattr(self, name) is not None:
                require_positive_int(name.replace("_", " "), getattr(self, name))
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", parse_shape(self.input_shape))
        given = [flag for flag, value in SAMPLE_SHAPES.items() if getattr(self, value) is not None]
        if len(given) > 1:
            raise B3Error(f"give only one of {' and '.join(given)}")
        if self.input_dtype is not None:
            require_choice("input dtype", self.input_dtype, INPUT_DTYPES)
        for name in ("loss", "train_step"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or ":" not in value):
                flag = "--" + name.replace("_", "-")
                raise B3Error(f"{flag} must be module:function, got {value!r}")
        if not self.lr > 0:
            raise B3Error(f"learning rate must be positive, got {self.lr}")
        if not isinstance(self.model, str) or not self.model:
            raise B3Error(f"model must be a name, got {self.model!r}")

    def set_fields(self) -> list[str]:
        """The fields this spec sets: those without a default, and those away from it."""
        return [
            f.name
            for f in dataclasses.fields(self)
            if f.default is dataclasses.MISSING or getattr(self, f.name) != f.default
        ]

    def for_mode(self, mode: str) -> StepSpec:
        """This configuration in `mode`; inference drops what only training has (accumulation,
        activation checkpointing)."""
        if mode == "train":
            return self.replace(mode=mode)
        return self.replace(mode=mode, accumulation_steps=1, activation_checkpointing="none")

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * (self.accumulation_steps if self.mode == "train" else 1)

    @property
    def label(self) -> str:
        parts = [self.model, self.mode, f"bs{self.batch_size}", self.precision]
        if self.mode == "train" and self.accumulation_steps > 1:
            parts.append(f"acc{self.accumulation_steps}")
        if self.image_size:
            parts.append(f"img{self.image_size}")
        if self.seq_len:
            parts.append(f"seq{self.seq_len}")
        if self.input_shape:
            parts.append(f"in{self.input_shape}")
        if self.input_dtype:
            parts.append(self.input_dtype)
        if self.loss:
            parts.append(f"loss={self.loss}")
        if self.train_step:
            parts.append(f"step={self.train_step}")
        if self.activation_checkpointing != "none":
            parts.append(f"ckpt-{self.activation_checkpointing}")
        if self.channels_last:
            parts.append("cl")
        if self.compile:
            parts.append("compiled")
        if not self.cudnn_benchmark:
            parts.append("no-cudnn-benchmark")
        return "/".join(parts)


@dataclass(frozen=True)
class Timing(Record):
    """How a step is timed. With the blocked clock each timed sample is a block of
    `block_steps` steps (None: enough steps for a block of at least MIN_BLOCK_SECONDS, judged
    from the last warm-up step); with the per-step clock each sample is one step."""

    repeats: int = field(
        default=DEFAULT_REPEATS,
        metadata=option(
            "--repeats", parse=parse_positive, help="timed samples (steps, or blocks of steps)"
        ),
    )
    warmup: int = field(
        default=MIN_WARMUP,
        metadata=option(
            "--warmup",
            parse=lambda text: parse_positive_int("value", text, 0),
            help=f"untimed steps first (at least {MIN_WARMUP}; fp16 warms until the loss "
            "scale settles)",
        ),
    )
    clock: str = field(
        default="blocked",
        metadata=option(
            "--clock",
            choices=CLOCKS,
            help="blocked: k steps between two syncs (throughput); per-step: each step "
            "between two syncs (latency)",
        ),
    )
    block_steps: int | None = field(
        default=None,
        metadata=option(
            "--block-steps", parse=parse_positive, help="steps per block with the blocked clock"
        ),
    )

    telemetry: bool = field(
        default=True,
        metadata=option(
            "--no-telemetry",
            action="store_false",
            help="do not sample clocks, power, CPU steal and outside load during the timed "
            "region (on by default; see docs/measurement.md)",
        ),
    )
    flops: bool = field(
        default=True,
        metadata=option(
            "--no-flops",
            action="store_false",
            help="do not count the step's FLOPs (counted by torch's FlopCounterMode in one "
            "more step, after the timed ones)",
        ),
    )
    phases: bool = field(
        default=False,
        metadata=option(
            "--phases",
            action="store_true",
            help="also time forward+loss, backward, the optimizer step (and under DDP the "
            "all-reduce wait) in a separate pass after the timed one",
        ),
    )
    peak_tflops: float | None = field(
        default=None,
        metadata=option(
            "--peak-tflops",
            parse=parse_number,
            help="the device's peak TFLOP/s for the step's precision, which MFU divides by "
            "(default: the datasheet's for a known GPU, a measured matmul peak on CPU)",
        ),
    )
    discard_throttled: bool = field(
        default=False,
        metadata=option(
            "--discard-throttled",
            action="store_true",
            help="drop timed samples taken while the GPU reported thermal or power throttling "
            "(needs NVML: pip install b3core[nvml])",
        ),
    )

    def __post_init__(self) -> None:
        require_positive_int("repeats", self.repeats)
        if self.warmup < MIN_WARMUP:
            raise B3Error(f"warm-up must be at least {MIN_WARMUP} steps, got {self.warmup}")
        require_choice("clock", self.clock, CLOCKS)
        if self.block_steps is not None:
            require_positive_int("block steps", self.block_steps)
            if self.clock == "per-step" and self.block_steps != 1:
                raise B3Error("--block-steps needs --clock blocked")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise B3Error(f"peak TFLOP/s must be positive, got {self.peak_tflops}")
        if self.discard_throttled and not self.telemetry:
            raise B3Error("--discard-throttled needs telemetry (drop --no-telemetry)")
