"""`b3 advise`: which batch size to use, from a sweep (and a find-max-batch result)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from b3core.errors import B3Error
from b3core.studies.lr_rules import RULES

from .options import (
    memory_size,
    positive_int,
    write_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("advise", help="which batch size to use, from a sweep")
    p.add_argument("--sweep", required=True, help="a `b3 sweep --out` folder")
    p.add_argument("--find-max", default=None, help="a `b3 find-max-batch --json` file")
    p.add_argument("--memory-budget", type=memory_size, default=None)
    p.add_argument("--batch", type=positive_int, default=None, help="the batch to advise on")
    p.add_argument("--base-lr", type=float, default=None, help="reference learning rate")
    p.add_argument("--base-batch", type=positive_int, default=128, help="its batch size")
    p.add_argument("--lr-rule", choices=RULES, default=RULES[0])
    p.add_argument("--dataset-size", type=positive_int, default=None, help="for warm-up steps")
    p.add_argument(
        "--target-batch",
        type=positive_int,
        default=None,
        help="effective batch to reach with accumulation",
    )
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(func=cmd_advise)


def cmd_advise(args: argparse.Namespace) -> int:
    import pandas as pd

    from b3core.studies.advise import LrRequest, advise
    from b3core.studies.sweep import aggregate, read_log

    header, records = read_log(Path(args.sweep) / "sweep.jsonl")
    sweep = aggregate(records.values())
    if not sweep.for_mode("train"):
        raise B3Error(f"the sweep in {args.sweep} holds no training results yet")
    found_max = None
    if args.find_max:
        found_max = read_find_max(args.find_max, header["plan"]["base"])
    budget = args.memory_budget
    gpus = header.get("machine", {}).get("gpus") or []
    if budget is None and gpus:
        budget = gpus[0]["memory_bytes"]
    lr = (
        LrRequest(args.base_lr, args.base_batch, args.lr_rule, args.dataset_size)
        if args.base_lr
        else None
    )
    advice = advise(
        sweep,
        memory_fit=sweep.memory_fit("train"),
        memory_budget=budget,
        found_max=found_max,
        batch=args.batch,
        lr=lr,
        target_batch=args.target_batch,
    )
    table = pd.DataFrame(advice.rows(), columns=["question", "answer"])
    print(table.to_markdown(index=False))
    if args.json:
        write_json(args.json, advice.to_dict())
    return 0


def read_find_max(path: str, swept: dict) -> int:
    """The measured edge from a `find-max-batch --json` file, if it is for the swept setup."""
    try:
        data = json.loads(Path(path).read_text())
        max_batch, spec = int(data["max_batch"]), dict(data["spec"])
    except FileNotFoundError:
        raise B3Error(f"find-max-batch file {path!r} does not exist") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise B3Error(f"find-max-batch file {path!r} is corrupt ({exc!r})") from None
    keys = ("model", "precision", "image_size", "optimizer", "channels_last", "device")
    differ = [k for k in keys if spec.get(k) != swept.get(k)]
    if differ:
        found = ", ".join(f"{k} {spec.get(k)!r} vs {swept.get(k)!r}" for k in differ)
        raise B3Error(f"find-max-batch file {path!r} is for another setup than the sweep: {found}")
    return max_batch
