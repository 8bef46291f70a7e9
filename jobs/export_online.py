"""Export the night's user_topk and item_related lists to Redis for online serving.

    python -m jobs.export_online --ds 2024-01-01 [--batch-size 1000] [--allow-older]

Reads scores/user_topk/ds=D and scores/item_related/ds=D from the lake, writes them to
``cfg.online_redis_url`` as a new version (``<prefix>:v:<ds>-<run id>:user:<user_key>``,
``...:item:<item_id>``), verifies it, then switches ``<prefix>:current`` to it in one atomic
step; replaced versions expire after ``online_old_version_ttl_s``. A failure at any point
leaves readers on the previous version; re-run the job. Set the URL (it may carry a password,
which is never logged) with ECREC_ONLINE_REDIS_URL or the YAML config rather than on the
command line, where other users of the machine can read it.

Exit 0: exported, or skipped because Redis already serves a newer night; 1: Redis
unreachable, the export failed (nothing switched) or the lists are malformed; 3: the ds has no
score tables in the lake.
"""

from __future__ import annotations

import argparse
import logging

from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.lake import Lake, parse_ds
from ecrec_lib.privacy.secrets import redact_url
from ecrec_lib.serving.online import (
    OnlineExportError,
    OnlineSettings,
    connect_redis,
    export_night,
    unavailable_error,
)
from jobs.common import setup_logging

log = logging.getLogger("jobs.export_online")
EXIT_FAILED = 1
EXIT_MISSING = 3
AFTER_FAILURE = (" Readers keep the version they had; the night's lake and warehouse results "
                 "stay published. Re-run `python -m jobs.export_online --ds {ds}` once fixed")


def main(argv: list[str] | None = None) -> int:
    import redis

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD to export")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="keys per Redis pipeline round trip (default 1000)")
    parser.add_argument("--run-id", default=None,
                        help="the version's run id (default: random); letters, digits, _ .")
    parser.add_argument("--allow-older", action="store_true",
                        help="serve this night even when Redis serves a newer one (rollback)")
    args = parser.parse_args(argv)
    setup_logging()
    parse_ds(args.ds)
    cfg = config_from_args(args)
    url = cfg.online_redis_url
    settings = OnlineSettings.from_config(cfg, args.batch_size)
    log.info("exporting ds=%s to %s (prefix %r)", args.ds, redact_url(url), settings.prefix)
    try:
        r = connect_redis(url)
        result = export_night(r, Lake(cfg.lake_root), args.ds, settings, args.run_id,
                              args.allow_older)
    except OnlineExportError as exc:
        log.error("online export of ds=%s failed: %s.%s", args.ds, exc,
                  AFTER_FAILURE.format(ds=args.ds))
        return EXIT_FAILED
    except redis.RedisError as exc:
        log.error("online export of ds=%s failed: %s.%s", args.ds,
                  unavailable_error(url, exc, "exporting"), AFTER_FAILURE.format(ds=args.ds))
        return EXIT_FAILED
    except FileNotFoundError as exc:
        log.error("cannot export ds=%s: %s", args.ds, exc)
        return EXIT_MISSING
    except ValueError as exc:
        log.error("cannot export ds=%s: %s", args.ds, exc)
        return EXIT_FAILED
    if result.skipped:
        log.warning("ds=%s not exported: %s", args.ds, result.skipped)
        return 0
    log.info("ds=%s served from %s as version %s (previous %s): %s; seconds %s", args.ds,
             redact_url(url), result.version, result.previous, result.counts,
             {k: round(v, 2) for k, v in result.seconds.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
