"""`b3 models` and `b3 machine`: what b3 can train, and where it runs."""

from __future__ import annotations

import argparse
import json

from b3core.errors import B3Error


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models", help="list the models: built-in, installed packages' (b3.models), or timm's"
    )
    p.add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'resnet*'")
    p.add_argument(
        "--timm",
        metavar="PATTERN",
        help="list timm's models matching a wildcard instead, e.g. 'resnet*' (needs timm)",
    )
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("machine", help="print this machine's slug (or its full record)")
    p.add_argument("--json", action="store_true", help="print the full machine record")
    p.add_argument("--asv", action="store_true", help="register the slug as asv's machine name")
    p.add_argument("--asv-config", default="asv.conf.json")
    p.set_defaults(func=cmd_machine)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def cmd_models(args: argparse.Namespace) -> int:
    import pandas as pd

    from b3core.workloads.models import count_parameters, get_model_spec, list_models

    if args.timm is not None:
        return _list_timm(args.timm)
    names = list_models(args.pattern)
    if not names:
        raise B3Error(f"no model matches {args.pattern!r}")
    rows = []
    for name in names:
        spec = get_model_spec(name)
        model_input = spec.resolve_input()
        rows.append(
            {
                "model": name,
                "origin": spec.origin,
                "package": " ".join(filter(None, [spec.package, spec.version])),
                "parameters": f"{count_parameters(spec.build(model_input)):,}",
                "input": _shape(model_input.shape)
                + (f" int64<{model_input.vocab_size}" if model_input.dtype == "int64" else ""),
                "classes": model_input.num_classes,
                "description": spec.description,
            }
        )
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(
        "Also: package.module:function (your own factory), timm/NAME (`b3 models --timm`) and "
        "hf/TYPE (a transformers model type, e.g. hf/gpt2)."
    )
    return 0


def _list_timm(pattern: str) -> int:
    """timm's names with their default input and classes, from timm's configs (nothing built)."""
    import pandas as pd

    from b3core.workloads.model_sources import timm_model_names, timm_spec

    names = timm_model_names(pattern)
    if not names:
        raise B3Error(f"no timm model matches {pattern!r}")
    rows = []
    for name in names:
        spec = timm_spec(name)
        rows.append({"model": name, "input": _shape(spec.input_shape), "classes": spec.num_classes})
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(f"{len(names)} timm models (timm {spec.version}), built with random weights")
    return 0


def cmd_machine(args: argparse.Namespace) -> int:
    from b3core.measuring.machine import machine_record

    record = machine_record()
    if args.json:
        print(json.dumps(record, indent=2))
    elif args.asv:
        from b3core.suites.asv_support import register_asv_machine

        register_asv_machine(record, config=args.asv_config)
        print(record["slug"])
    else:
        print(record["slug"])
    return 0
