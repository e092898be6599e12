"""`b3 publish`: asv's HTML history, self-contained (it needs no network to be viewed)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "publish",
        help="asv publish, then make the HTML self-contained (no CDN, works offline)",
    )
    p.add_argument("--config", default="asv.conf.json", help="asv's config (default: %(default)s)")
    p.add_argument(
        "asv_args",
        nargs=argparse.REMAINDER,
        help="passed on to `asv publish`, e.g. -- --no-pull",
    )
    p.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    from b3core.suites.asv_publish import publish

    asv_args = [a for a in args.asv_args if a != "--"]
    site, rewritten = publish(Path(args.config), asv_args)
    kept = sum(r.pin_kept for r in rewritten)
    files = len({r.served for r in rewritten})
    print(
        f"{site}: {len(rewritten)} references to {files} CDN files now served from the site "
        f"({kept} with asv's own integrity hash, {len(rewritten) - kept} re-pinned to the file "
        "served); open it with `asv preview` or any web server"
    )
    return 0
