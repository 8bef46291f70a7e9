"""Finish or roll back every partition swap a killed job left half-done in a local lake.

    python -m jobs.recover_lake [--lake ./lake] [--config F]

Every writer already recovers the partitions it writes before writing them; this is the
operator's (and a chaos harness's) way to repair the whole lake at once, e.g. before reading
it by hand. Partitions held by a live writer are left to it. Prints one line per action.
Exit 0 (also when there was nothing to do); 1 when a partition needs a person
(:class:`ecrec_lib.partitions.RecoveryError`: the message says what to move where).
"""

from __future__ import annotations

import argparse
import logging

from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.partitions import RecoveryError, recover_lake
from jobs.common import setup_logging

log = logging.getLogger("jobs.recover_lake")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    cfg = config_from_args(args)
    try:
        done = recover_lake(cfg.lake_root)
    except RecoveryError as exc:
        log.error("%s", exc)
        return 1
    for partition, actions in done.items():
        for action in actions:
            print(f"{partition}: {action}")
    log.info("recovered %d partitions under %s", len(done), cfg.lake_root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
