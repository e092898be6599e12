"""`b3 publish`: asv's HTML history, self-contained.

asv's page loads jQuery, flot, Bootstrap, stupidtable and blueimp-md5 from public CDNs, so a
machine without internet (a GPU cluster behind a firewall, a CI artifact opened offline) shows
only asv's "continental origin of swallow" error. b3 ships those files (asv_assets/, with their
licences, at the versions asv asks for) and, after `asv publish`, copies them into the site and
points every CDN reference at them, pinned with the hash of the file served. asv's installed
files are never touched. A reference that b3 does not ship (a later asv that changed its page)
fails loudly, naming it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from b3core.errors import B3Error

ASSETS = Path(__file__).parent / "asv_assets"
MANIFEST = ASSETS / "assets.json"
SITE_FOLDER = "b3-assets"  # where, inside the published site, the shipped files go
# a tag that makes the browser fetch something: scripts, stylesheets, images
RESOURCE_TAG = re.compile(r"<(?:script|link|img)\b[^>]*>", re.IGNORECASE)
EXTERNAL_URL = re.compile(r"""\b(?:src|href)=["']((?:https?:)?//[^"']+)["']""", re.IGNORECASE)
INTEGRITY = re.compile(r'\bintegrity="(sha256|sha384|sha512)-[^"]*"', re.IGNORECASE)


@dataclass(frozen=True)
class Rewritten:
    page: str  # the HTML file, relative to the site
    url: str  # what asv's page loaded
    served: str  # the site's own copy, relative to the site
    pin_kept: bool  # the served file matches asv's own integrity hash


def load_manifest() -> dict[str, str]:
    """CDN URL -> the shipped file (relative to ASSETS)."""
    return {a["url"]: a["file"] for a in json.loads(MANIFEST.read_text())["assets"]}


def read_asv_config(config: Path) -> dict:
    """asv's config (JSON with comments), read the way asv reads it."""
    from asv.util import load_json

    if not config.is_file():
        raise B3Error(f"no asv config at {str(config)!r}; pass --config")
    try:
        return load_json(str(config), js_comments=True)
    except Exception as exc:  # noqa: BLE001 - asv's own parse error, as one line
        raise B3Error(f"cannot read asv config {config}: {exc}") from None


def _option_value(args: list[str], *flags: str) -> str | None:
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def publish(config: Path, asv_args: list[str]) -> tuple[Path, list[Rewritten]]:
    """`asv publish` with the user's arguments, then the site made self-contained."""
    config = config.resolve()
    settings = read_asv_config(config)
    html_dir = _option_value(asv_args, "--html-dir", "-o") or settings.get("html_dir")
    if not html_dir:
        raise B3Error(f'{config.name} sets no html_dir: add one (e.g. ".asv/html")')
    results = config.parent / settings.get("results_dir", "results")
    measured = [
        p for p in results.glob("*/*.json") if p.name != "machine.json"
    ] if results.is_dir() else []  # fmt: skip
    if not measured:
        raise B3Error(f"no asv results in {results}: run `asv run` first")
    proc = subprocess.run(
        [sys.executable, "-m", "asv", "publish", "--config", str(config), *asv_args],
        cwd=config.parent,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise B3Error(f"asv publish failed ({proc.returncode}): {detail}")
    site = (config.parent / html_dir).resolve()
    return site, make_self_contained(site)


def sri(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, path.read_bytes()).digest()
    return f"{algorithm}-{base64.b64encode(digest).decode()}"


def make_self_contained(site: Path) -> list[Rewritten]:
    """Copy the shipped files into the site and point its pages at them. Raises B3Error naming
    any external reference b3 does not ship, and any shipped file that is missing."""
    if not (site / "index.html").is_file():
        raise B3Error(f"no published asv site at {site} (no index.html)")
    manifest = load_manifest()
    for file in sorted(set(manifest.values())):
        if not (ASSETS / file).is_file():
            raise B3Error(f"b3's copy of asv's asset {file} is missing from {ASSETS}")
    target = site / SITE_FOLDER
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ASSETS, target)
    rewritten: list[Rewritten] = []
    unknown: list[str] = []
    for page in sorted(site.rglob("*.html")):
        if target not in page.parents:
            _rewrite_page(page, site, manifest, rewritten, unknown)
    left = external_references(site)
    if unknown or left:
        listed = "; ".join(sorted(set(unknown) | set(left)))
        raise B3Error(
            f"asv's page loads files that b3 does not ship (a newer asv changed its page?): "
            f"{listed}"
        )
    return rewritten


def _rewrite_page(
    page: Path, site: Path, manifest: dict[str, str], rewritten: list, unknown: list
) -> None:
    """Point the page's CDN references at the site's copies (appended to `rewritten`); those
    b3 does not ship are appended to `unknown` and left as they are."""
    relative_page = page.relative_to(site).as_posix()

    def rewrite_tag(match: re.Match) -> str:
        tag = match.group(0)
        found = EXTERNAL_URL.search(tag)
        if found is None:
            return tag
        url = found.group(1)
        if url not in manifest:
            unknown.append(f"{relative_page}: {url}")
            return tag
        served = site / SITE_FOLDER / manifest[url]
        link = os.path.relpath(served, page.parent).replace(os.sep, "/")
        tag = tag.replace(found.group(0), found.group(0).replace(url, link))
        pinned = INTEGRITY.search(tag)
        kept = False
        if pinned:
            ours = f'integrity="{sri(served, pinned.group(1).lower())}"'
            kept = pinned.group(0) == ours
            tag = tag.replace(pinned.group(0), ours)
        rewritten.append(Rewritten(relative_page, url, served.relative_to(site).as_posix(), kept))
        return tag

    text = page.read_text(encoding="utf-8")
    new = RESOURCE_TAG.sub(rewrite_tag, text)
    if new != text:
        page.write_text(new, encoding="utf-8")


def external_references(site: Path) -> list[str]:
    """Every resource a page of the site would still fetch from elsewhere."""
    found = []
    for page in sorted(site.rglob("*.html")):
        for tag in RESOURCE_TAG.findall(page.read_text(encoding="utf-8")):
            url = EXTERNAL_URL.search(tag)
            if url:
                found.append(f"{page.relative_to(site).as_posix()}: {url.group(1)}")
    return found
