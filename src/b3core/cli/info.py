"""`b3 models` and `b3 machine`: what b3 can train, and where it runs."""

from __future__ import annotations

import argparse
import json

from b3core.errors import B3Error


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'resnet*'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("machine", help="print this machine's slug (or its full record)")
    p.add_argument("--json", action="store_true", help="print the full machine record")
    p.add_argument("--asv", action="store_true", help="register the slug as asv's machine name")
    p.add_argument("--asv-config", default="asv.conf.json")
    p.set_defaults(func=cmd_machine)


def cmd_models(args: argparse.Namespace) -> int:
    import pandas as pd

    from b3core.workloads.models import count_parameters, create_model, get_model_spec, list_models

    names = list_models(args.pattern)
    if not names:
        raise B3Error(f"no model matches {args.pattern!r}")
    rows = []
    for name in names:
        spec = get_model_spec(name)
        rows.append(
            {
                "model": name,
                "parameters": f"{count_parameters(create_model(name)):,}",
                "input": "x".join(map(str, spec.input_shape())),
                "classes": spec.num_classes,
                "description": spec.description,
            }
        )
    print(pd.DataFrame(rows).to_markdown(index=False))
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
