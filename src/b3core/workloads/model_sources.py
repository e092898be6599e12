"""Models from outside b3: an import path (`package.module:function`), an installed package's
entry point (group `b3.models`), or timm's zoo (`timm/NAME`), each resolved to a ModelSpec.

A factory declares what its model eats with `@model_inputs(...)`, or with the same attributes
set by hand (`b3_input_shape`, `b3_num_classes`, `b3_input_dtype`, `b3_vocab_size`); what it
does not declare comes from its own defaults for `num_classes` and `image_size`, then b3's.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata as metadata
from collections.abc import Callable

from b3core.errors import B3Error
from b3core.spec.step import INPUT_DTYPES, parse_shape, shape_dims
from b3core.spec.validate import require_choice, require_positive_int
from b3core.workloads.model_spec import (
    DEFAULT_INPUT_SHAPE,
    DEFAULT_NUM_CLASSES,
    ModelSpec,
    first_doc_line,
)
from b3core.workloads.user_code import TRACEBACK_HINT, first_line, load_callable, parameter_default

ENTRY_POINT_GROUP = "b3.models"
TIMM_PREFIX = "timm/"
TIMM_INSTALL = 'pip install "b3core[timm]"'
DECLARED = ("input_shape", "num_classes", "input_dtype", "vocab_size")


def model_inputs(
    input_shape: tuple[int, ...] | str | None = None,
    num_classes: int | None = None,
    input_dtype: str | None = None,
    vocab_size: int | None = None,
):
    """Declare what a model factory's model eats: `@model_inputs(input_shape=(128,))`."""
    declared = {
        "input_shape": input_shape,
        "num_classes": num_classes,
        "input_dtype": input_dtype,
        "vocab_size": vocab_size,
    }

    def decorate(factory: Callable) -> Callable:
        for key, value in declared.items():
            if value is not None:
                setattr(factory, f"b3_{key}", value)
        return factory

    return decorate


def factory_spec(name: str, factory: Callable, **identity: str | None) -> ModelSpec:
    """A ModelSpec for a user's factory, from what it declares (see the module's docstring)."""
    declared = {key: getattr(factory, f"b3_{key}", None) for key in DECLARED}
    try:
        if declared["input_shape"] is not None:
            shape = shape_dims(parse_shape(declared["input_shape"]))
        else:
            size = parameter_default(factory, "image_size")
            shape = (3, size, size) if isinstance(size, int) else DEFAULT_INPUT_SHAPE
        classes = declared["num_classes"] or parameter_default(factory, "num_classes")
        classes = require_positive_int("num_classes", classes or DEFAULT_NUM_CLASSES)
        dtype = require_choice("input dtype", declared["input_dtype"] or "float32", INPUT_DTYPES)
        vocab = declared["vocab_size"]
        if vocab is not None:
            require_positive_int("vocab_size", vocab)
    except B3Error as exc:
        raise B3Error(f"model {name!r} declares a bad input: {exc}") from None
    return ModelSpec(
        name=name,
        builder=factory,
        input_shape=shape,
        num_classes=classes,
        input_dtype=dtype,
        vocab_size=vocab,
        description=first_doc_line(factory),
        **identity,
    )


def import_path_spec(name: str) -> ModelSpec:
    factory = load_callable(name, "model")
    package, version = _distribution_of(name.partition(":")[0].split(".")[0])
    return factory_spec(name, factory, origin="import path", package=package, version=version)


def _distribution_of(top_level_module: str) -> tuple[str, str | None]:
    """The installed distribution that provides a module, and its version; a module that is
    only on the path, not installed, is its own name with no version."""
    for dist in metadata.packages_distributions().get(top_level_module, []):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return top_level_module, None


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def entry_point_names() -> list[str]:
    return sorted(_entry_points())


def entry_point_spec(name: str) -> ModelSpec | None:
    ep = _entry_points().get(name)
    if ep is None:
        return None
    dist = ep.dist.name if ep.dist else "an unknown package"
    try:
        factory = ep.load()
    except Exception as exc:  # noqa: BLE001 - whatever the package raised on import
        raise B3Error(
            f"model {name!r} from package {dist} ({ep.value}) does not load "
            f"({type(exc).__name__}: {first_line(exc)}); {TRACEBACK_HINT}"
        ) from exc
    if not callable(factory):
        raise B3Error(f"model {name!r} from package {dist} ({ep.value}) is not a function")
    version = ep.dist.version if ep.dist else None
    return factory_spec(name, factory, origin="entry point", package=dist, version=version)


def _timm():
    try:
        import timm
    except ImportError as exc:
        raise B3Error(f"timm models need timm: {TIMM_INSTALL}") from exc
    return timm


def timm_spec(name: str) -> ModelSpec:
    """A timm model with random weights; its default input and classes come from timm's
    pretrained config, which lives in timm's code (nothing is downloaded)."""
    timm = _timm()
    arch = name.removeprefix(TIMM_PREFIX)
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise B3Error(f"timm has no model {arch!r}{hint} (see `b3 models --timm PATTERN`)")
    cfg = timm.get_pretrained_cfg(arch)
    default_shape = tuple(cfg.input_size) if cfg and cfg.input_size else DEFAULT_INPUT_SHAPE

    def build(num_classes: int, input_shape: tuple[int, ...]):
        kwargs = {"pretrained": False, "num_classes": num_classes}
        if input_shape[0] != default_shape[0]:
            kwargs["in_chans"] = input_shape[0]
        if len(input_shape) == 3 and input_shape[1:] != default_shape[1:]:
            try:  # models whose layers depend on the input size (ViTs) take it here
                return timm.create_model(arch, img_size=input_shape[1:], **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
        return timm.create_model(arch, **kwargs)

    return ModelSpec(
        name=name,
        builder=build,
        input_shape=default_shape,
        num_classes=(cfg.num_classes if cfg else 0) or 1000,
        # a fixed-size model (a ViT) is built for the asked size through img_size above
        origin="timm",
        package="timm",
        version=timm.__version__,
        description=f"timm's {arch}, random weights",
    )


def timm_model_names(pattern: str) -> list[str]:
    """timm's architectures matching a wildcard, as b3 names them (timm/NAME)."""
    return [TIMM_PREFIX + n for n in _timm().list_models(pattern) if fnmatch.fnmatch(n, pattern)]
