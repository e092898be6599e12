"""`b3 advise`: which batch size to use, from a sweep (and a find-max-batch result)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from b3core.errors import B3Error
from b3core.spec.formats import upgraded
from b3core.studies.lr_rules import LrRequest

from .options import (
    add_fields_as_options,
    memory_size,
    positive_int,
    record_args,
    write_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("advise", help="which batch size to use, from a sweep")
    p.add_argument("--sweep", required=True, help="a `b3 sweep --out` folder")
    p.add_argument("--find-max", default=None, help="a `b3 find-max-batch --json` file")
    p.add_argument("--memory-budget", type=memory_size, default=None)
    p.add_argument("--batch", type=positive_int, default=None, help="the batch to advise on")
    add_fields_as_options(p, LrRequest)
    p.add_argument(
        "--target-batch",
        type=positive_int,
        default=None,
        help="effective batch to reach with accumulation",
    )
    p.add_argument(
        "--converge",
        metavar="DIR",
        help="a `b3 converge --out` folder: the batch with the least predicted time to target "
        "(its steps to target x the sweep's time per update)",
    )
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(func=cmd_advise)


def cmd_advise(args: argparse.Namespace) -> int:
    import pandas as pd

    from b3core.studies.advise import advise
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
    lr = LrRequest(**record_args(LrRequest, args))
    lr = lr if lr.base_lr else None
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
    payload = advice.to_dict()
    if args.converge:
        swept_model = header["plan"]["base"]["model"]
        payload["time_to_target"] = _time_to_target(
            args.converge, sweep, swept_model, advice.largest_safe
        )
    if args.json:
        write_json(args.json, "advise", payload)
    return 0


def _time_to_target(folder: str, sweep, swept_model: str, largest_safe: int | None) -> dict:
    """Print and return the time-to-target advice from a convergence study and the sweep."""
    import pandas as pd

    from b3core.studies.converge import LOG_NAME, read_log
    from b3core.studies.time_to_target import fastest, predict

    header, runs = read_log(Path(folder) / LOG_NAME)
    studied = header["study"]["step"]["model"]
    if studied != swept_model:
        raise B3Error(f"the study in {folder} trained {studied}, the sweep timed {swept_model}")
    predictions = predict(list(runs.values()), sweep, largest_safe)
    if not predictions:
        raise B3Error(
            f"no batch of the study in {folder} both reached its target and can be timed from "
            "the sweep (each needs a swept size that equals or divides it)"
        )
    rows = [
        {
            "batch": p.batch_size,
            "reached": f"{p.reached}/{p.runs}",
            "steps to target": f"{p.steps_to_target:.0f}",
            "update": f"{p.micro_batch} x {p.accumulation_steps}"
            + ("" if p.measured else " (predicted)"),
            "s per update": f"{p.step_s:.4g}",
            "predicted s to target": f"{p.seconds:.3g}",
        }
        for p in predictions
    ]
    print()
    print(pd.DataFrame(rows).to_markdown(index=False))
    best = fastest(predictions)
    if best is None:
        print("no batch reached the target from every seed: none is advised")
        return {"predictions": [p.to_dict() for p in predictions], "fastest": None}
    how = (
        f"micro-batch {best.micro_batch} x {best.accumulation_steps} accumulation steps"
        if best.accumulation_steps > 1
        else f"batch {best.micro_batch}"
    )
    print(
        f"fastest to target: batch {best.batch_size} ({how}), predicted {best.seconds:.3g} s "
        f"on the sweep's machine; lr {best.lr:.3g}, {best.warmup_updates} warm-up updates "
        "(as the study trained it)"
    )
    return {"predictions": [p.to_dict() for p in predictions], "fastest": best.to_dict()}


def read_find_max(path: str, swept: dict) -> int:
    """The measured edge from a `find-max-batch --json` file, if it is for the swept setup."""
    try:
        where = f"find-max-batch file {path!r}"
        data = upgraded("find-max", json.loads(Path(path).read_text()), where)
        if "curve" in data:
            raise B3Error(f"{where} holds an edge per sequence length: give one for the sweep's")
        max_batch, spec = int(data["max_batch"]), dict(data["spec"])
    except FileNotFoundError:
        raise B3Error(f"find-max-batch file {path!r} does not exist") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise B3Error(f"find-max-batch file {path!r} is corrupt ({exc!r})") from None
    keys = ("model", "precision", "image_size", "seq_len", "optimizer", "channels_last", "device")
    differ = [k for k in keys if spec.get(k) != swept.get(k)]
    if differ:
        found = ", ".join(f"{k} {spec.get(k)!r} vs {swept.get(k)!r}" for k in differ)
        raise B3Error(f"find-max-batch file {path!r} is for another setup than the sweep: {found}")
    return max_batch
