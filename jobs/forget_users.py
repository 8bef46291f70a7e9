"""Erase users from the lake, the warehouse and the model registry (the right to be forgotten).

    python -m jobs.forget_users --users-file FILE [--pseudonyms] [--request-id ID] [--lake DIR]
    python -m jobs.forget_users --pending [--lake DIR]

``--users-file``: one user per line, raw user ids (the shop's ``user_id``) or, with
``--pseudonyms``, their ``user_key`` pseudonyms. ``--pending`` processes every request file
dropped in ``<lake>/requests/forget/`` (``*.txt`` = raw ids, ``*.pseudonyms.txt`` =
pseudonyms): a done file is replaced by ``requests/forget/done/<name>.<request id>.txt``
holding only pseudonyms (the raw ids are not kept), a failed one is moved to
``requests/forget/failed/`` with ``<name>.error.txt`` beside it.

What is erased and how: ``ecrec_lib/privacy/forget.py``. The audit record is
``ops/forget/<request id>.json`` plus a line in ``ops/forget/forget_log.jsonl`` (pseudonyms,
never raw ids). The same request can be re-run safely (after a kill too).

Exit codes: 0 done; 1 a request failed (message says why; nothing half-done is visible);
2 the users file does not exist.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ecrec_lib.config import (
    EcrecConfig,
    add_config_args,
    config_from_args,
    resolve_pseudonymization_key,
)
from ecrec_lib.lake import Lake
from jobs.common import setup_logging

log = logging.getLogger("jobs.forget_users")
REQUESTS = ("requests", "forget")
PSEUDONYM_SUFFIX = ".pseudonyms.txt"


def requests_dir(cfg: EcrecConfig) -> Path:
    return Path(Lake(cfg.lake_root).dataset(*REQUESTS))


def run_file(cfg: EcrecConfig, path: Path, *, pseudonyms: bool, request_id: str | None,
             key: bytes) -> dict:
    from ecrec_lib.privacy.forget import ForgetRequest, forget_users, read_users_file

    ids = read_users_file(path, pseudonyms=pseudonyms)
    request = ForgetRequest.build(ids, key, pseudonyms=pseudonyms, request_id=request_id)
    log.info("request %s: %d users (%s ids)", request.request_id, len(request.pseudonyms),
             request.id_kind)
    record = forget_users(cfg, request, key)
    log.info("request %s done: rows removed by zone %s, warehouse %s, flagged versions %s",
             record["request_id"], record["rows_removed_by_zone"],
             record["warehouse_rows_removed"], record["flagged_model_versions"])
    return record


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_pending(cfg: EcrecConfig, key: bytes) -> int:
    """Process every request file in requests/forget/; 1 when any failed."""
    from ecrec_lib.privacy.forget import ForgetError
    from ecrec_lib.registry.client import RegistryError
    from ecrec_lib.warehouse import WarehouseError

    folder = requests_dir(cfg)
    files = sorted(p for p in folder.glob("*.txt") if p.is_file()) if folder.is_dir() else []
    if not files:
        log.info("no erasure request in %s", folder)
        return 0
    failed = 0
    for path in files:
        is_pseudo = path.name.endswith(PSEUDONYM_SUFFIX)
        stem = path.name.removesuffix(PSEUDONYM_SUFFIX if is_pseudo else ".txt")
        try:
            record = run_file(cfg, path, pseudonyms=is_pseudo, request_id=None, key=key)
        except (RegistryError, WarehouseError) as exc:
            failed += 1  # a service is down: the file stays for the next run
            log.error("request file %s not processed, it stays for the next run: %s", path.name, exc)
            continue
        except ForgetError as exc:
            failed += 1
            log.error("request file %s failed: %s", path.name, exc)
            bad = folder / "failed" / path.name
            _atomic_write(bad.with_name(f"{path.name}.error.txt"), f"{exc}\n")
            os.replace(path, bad)
            continue
        # Only pseudonyms are kept: the raw ids of a done request must not outlive it.
        done = folder / "done" / f"{stem}.{record['request_id']}{PSEUDONYM_SUFFIX}"
        _atomic_write(done, "".join(f"{k}\n" for k in record["pseudonyms"]))
        path.unlink()
        log.info("request file %s done -> %s", path.name, done.relative_to(folder))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--users-file", help="file with one user per line (raw ids by default)")
    src.add_argument("--pending", action="store_true",
                     help="process every request file in <lake>/requests/forget/")
    parser.add_argument("--pseudonyms", action="store_true",
                        help="the users file holds pseudonyms (user_key), not raw ids")
    parser.add_argument("--request-id", default=None,
                        help="audit id (default: derived from the users, so a re-run is the same request)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    cfg = config_from_args(args)
    key = resolve_pseudonymization_key()
    if args.pending:
        return run_pending(cfg, key)

    from ecrec_lib.privacy.forget import ForgetError
    from ecrec_lib.registry.client import RegistryError
    from ecrec_lib.warehouse import WarehouseError

    try:
        run_file(cfg, Path(args.users_file), pseudonyms=args.pseudonyms,
                 request_id=args.request_id, key=key)
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    except (ForgetError, RegistryError, WarehouseError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
