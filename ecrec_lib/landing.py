"""The landing contract of raw partitions: a ``_SUCCESS`` marker written last.

A producer (``jobs.generate_events``, ``jobs.ingest_amazon``, a shop's export) lands a day
as data files in ``raw/<kind>/ds=D/`` and writes ``_SUCCESS`` into the same directory *after*
the last data file. Until the marker exists the day is still landing: the nightly sensor
waits and ``jobs.clean_events`` / ``jobs.validate`` refuse it, so a half-copied day is never
cleaned as if it were the whole day.

``_SUCCESS`` may be empty (the Hadoop/Spark convention) or a landing manifest, a JSON object
``{"files": {"part-00000.json.gz": <bytes>, ...}, "lines": <n>}``. With a manifest, every
listed file must be present with exactly that size, which also catches a copy tool that
moved the marker before the data files. A marker with no data file is an empty day (the
producer had nothing to land): it is processed as "no data", not waited for.

Only the standard library is needed for local lakes (the DAG's sensor imports this);
remote lakes are listed through pyarrow's filesystems.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ecrec_lib.pipeline.io import InputMissingError

LANDING_MARKER = "_SUCCESS"
MISSING, LANDING, READY = "missing", "landing", "ready"


class LandingIncompleteError(InputMissingError):
    """The raw partition exists but its ``_SUCCESS`` marker is absent or disagrees with it."""


@dataclass(frozen=True)
class LandingStatus:
    """What a raw partition's directory says about its landing."""

    path: str
    state: str  # missing (no directory) | landing (marker absent or manifest unmet) | ready
    reason: str
    data_files: dict[str, int] = field(default_factory=dict)  # name -> bytes

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def empty(self) -> bool:
        """A completed landing without any data file (an empty day)."""
        return self.ready and not self.data_files

    @property
    def marker(self) -> str:
        return f"{self.path.rstrip('/')}/{LANDING_MARKER}"


def _is_data_file(name: str) -> bool:
    # Hidden files (.crc, a copy tool's temporaries) and _-prefixed metadata are not data.
    return not name.startswith(("_", "."))


def _list(path: str) -> tuple[dict[str, int], str | None] | None:
    """(data file sizes, marker text or None), or None when the directory does not exist."""
    if "://" in path and not path.startswith("file://"):
        from pyarrow import fs

        # Spark's Hadoop schemes name the same stores pyarrow opens as s3://
        uri = "s3://" + path.split("://", 1)[1] if path.startswith(("s3a://", "s3n://")) else path
        filesystem, root = fs.FileSystem.from_uri(uri)
        if filesystem.get_file_info(root).type != fs.FileType.Directory:
            return None
        infos = filesystem.get_file_info(fs.FileSelector(root))
        files = {Path(i.path).name: int(i.size) for i in infos if i.type == fs.FileType.File}
        marker = None
        if LANDING_MARKER in files:
            with filesystem.open_input_stream(f"{root.rstrip('/')}/{LANDING_MARKER}") as fh:
                marker = fh.read().decode("utf-8", errors="replace")
    else:
        local = Path(path.removeprefix("file://"))
        if not local.is_dir():
            return None
        files = {p.name: p.stat().st_size for p in local.iterdir() if p.is_file()}
        marker = (local / LANDING_MARKER).read_text(errors="replace") if LANDING_MARKER in files else None
    return {n: s for n, s in files.items() if _is_data_file(n)}, marker


def _manifest_problems(text: str, data: Mapping[str, int]) -> list[str]:
    """Disagreements between a manifest marker and the directory ([] for an empty marker)."""
    if not text.strip():
        return []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return [f"{LANDING_MARKER} is neither empty nor a JSON manifest ({exc})"]
    listed = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(listed, dict):
        return [f'{LANDING_MARKER} manifest has no "files" object of name -> bytes']
    problems = []
    for name, size in sorted(listed.items()):
        if name not in data:
            problems.append(f"{name} is listed in the manifest but absent")
        elif isinstance(size, int) and data[name] != size:
            problems.append(f"{name} has {data[name]} bytes, the manifest says {size}")
    return problems


def landing_status(path: str) -> LandingStatus:
    """Whether ``path`` (a raw partition directory) has completely landed, and why not."""
    listed = _list(path)
    if listed is None:
        return LandingStatus(path, MISSING, f"partition {path} does not exist yet")
    data, marker = listed
    if marker is None:
        return LandingStatus(
            path, LANDING,
            f"{len(data)} data file(s) but no {LANDING_MARKER} marker yet: the producer writes "
            f"{path.rstrip('/')}/{LANDING_MARKER} after its last data file",
            data,
        )
    problems = _manifest_problems(marker, data)
    if problems:
        return LandingStatus(path, LANDING, f"{LANDING_MARKER} manifest not met: " + "; ".join(problems),
                             data)
    what = f"{len(data)} data file(s)" if data else "no data file (an empty day)"
    return LandingStatus(path, READY, f"landed: {LANDING_MARKER} present, {what}", data)


def require_landed(path: str, what: str) -> LandingStatus:
    """The partition's status when it has landed completely; else :class:`LandingIncompleteError`
    naming the missing marker and the fix. An absent directory is returned as ``missing``:
    the reader reports a missing input in its own words."""
    status = landing_status(path)
    if status.state == LANDING:
        raise LandingIncompleteError(
            f"{what} partition {path} is not completely landed: {status.reason}. Wait for the "
            f"producer to finish (the nightly sensor does), or, if every file is there, mark the "
            f"landing complete with `touch {status.marker}` and re-run (docs/data_contracts.md, "
            "\"Landing\")"
        )
    return status


def manifest_text(files: Mapping[str, int], lines: int) -> str:
    """The ``_SUCCESS`` manifest a producer writes after ``files`` (name -> bytes)."""
    return json.dumps({"files": dict(sorted(files.items())), "lines": int(lines)}, indent=1,
                      sort_keys=True) + "\n"


__all__ = [
    "LANDING",
    "LANDING_MARKER",
    "LandingIncompleteError",
    "LandingStatus",
    "MISSING",
    "READY",
    "landing_status",
    "manifest_text",
    "require_landed",
]
