"""Fault injection: kill nightly jobs at random moments, re-run, prove nothing was lost.

    python -m jobs.chaos --lake DIR --nights 3 --trials N --out FILE [--seed S]
        [--modes kill,swap,second_writer] [--jobs clean_events,build_features,score_topk,publish_scores]

Generates a small lake under DIR (wiped first), runs every night once without faults as the
reference, then runs N trials: each restores the state before one job of one night, SIGKILLs
that job's process group at a random moment (``kill``), inside the window between the two
renames of a partition swap (``swap``), or starts a second writer beside it
(``second_writer``), then re-runs the night from that job and compares every partition, row
for row, with the reference. Writes FILE (JSON): ``trials``, ``faults_injected``,
``recovered``, ``rows_lost``, ``half_published_seen``, ``stray_processes`` and one entry per
trial. How it works: :mod:`ecrec_lib.chaos`.

Exit codes: 0 every trial recovered with nothing lost, no half-published state seen and no
stray process; 1 otherwise (the report says which trial and why); 2 the harness could not run
(bad arguments, a reference job failed).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ecrec_lib.chaos import CHAIN, MODES, ChaosConfig, ChaosError, Harness
from jobs.common import setup_logging

log = logging.getLogger("jobs.chaos")


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _write(out: Path, report: dict) -> None:
    """Write the report atomically (rewritten after every trial)."""
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True,
                        help="harness directory (wiped): work lake, snapshots, MLflow, job logs")
    parser.add_argument("--nights", type=int, default=3, help="consecutive nights to run")
    parser.add_argument("--trials", type=int, default=10, help="faults to inject, one per trial")
    parser.add_argument("--out", required=True, help="JSON report to write")
    parser.add_argument("--seed", type=int, default=7,
                        help="seed of the data, the trial plan and the kill moments")
    parser.add_argument("--start", default="2024-01-01", help="first night, YYYY-MM-DD")
    parser.add_argument("--users", type=int, default=300, help="generated users")
    parser.add_argument("--items", type=int, default=120, help="generated items")
    parser.add_argument("--modes", type=_names, default=MODES,
                        help=f"comma-separated fault modes, cycled over trials ({','.join(MODES)})")
    parser.add_argument("--jobs", type=_names, default=CHAIN,
                        help=f"comma-separated jobs to inject faults into ({','.join(CHAIN)})")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = ChaosConfig(root=Path(args.lake), nights=args.nights, trials=args.trials,
                          seed=args.seed, start=args.start, users=args.users, items=args.items,
                          modes=args.modes, jobs=args.jobs)
        log.info("config: %s", cfg)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        report = Harness(cfg).run(on_trial=lambda partial: _write(out, partial))
    except ChaosError as exc:
        log.error("%s", exc)
        return 2
    _write(out, report)
    totals = {k: report[k] for k in ("trials", "faults_injected", "recovered", "rows_lost",
                                      "half_published_seen", "stray_processes")}
    log.info("chaos report %s: %s", out, totals)
    ok = (report["recovered"] == report["trials"] and report["rows_lost"] == 0
          and report["half_published_seen"] == 0 and report["stray_processes"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
