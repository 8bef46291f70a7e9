"""Helpers shared by the suites: severities, schema and volume expectations, the suite context.

Every expectation carries ``meta={"severity": "critical" | "warning"}``: a failed critical
expectation stops the job before it publishes (``ecrec_lib.validation.DataContractError``); a
failed warning is logged and recorded in the validation results, and the run continues.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

CRITICAL = "critical"
WARNING = "warning"


@dataclass(frozen=True)
class SuiteContext:
    """What a suite needs to know beyond the data: the partition and its neighbours.

    ``prev_rows`` is the row count of the previous published partition (None: no previous
    partition, the volume check is skipped); ``min_rows`` an absolute lower bound (e.g. the
    minimum clean fraction of the raw input); ``present_columns`` the raw fields actually seen.
    """

    ds: str
    prev_rows: int | None = None
    min_rows: int = 0
    volume_drop_fraction: float = 0.5
    late_tolerance_hours: float = 6.0
    min_required_fraction: float = 0.5
    present_columns: tuple[str, ...] | None = None

    def window(self) -> tuple[dt.datetime, dt.datetime]:
        """[start, end] of accepted event times: the ds day widened by the late tolerance."""
        day = dt.datetime.combine(dt.date.fromisoformat(self.ds), dt.time())
        tol = dt.timedelta(hours=self.late_tolerance_hours)
        return day - tol, day + dt.timedelta(days=1) + tol


def meta(severity: str, why: str = "") -> dict[str, Any]:
    return {"severity": severity, "why": why} if why else {"severity": severity}


def schema_expectations(columns: dict[str, str], severity: str = CRITICAL) -> list[Any]:
    """Exact ordered column list plus the Spark type of each column."""
    import great_expectations as gx

    out: list[Any] = [
        gx.expectations.ExpectTableColumnsToMatchOrderedList(
            column_list=list(columns), meta=meta(severity, "published schema")
        )
    ]
    for name, spark_type in columns.items():
        out.append(
            gx.expectations.ExpectColumnValuesToBeOfType(
                column=name, type_=spark_type, meta=meta(severity, "column type")
            )
        )
    return out


def not_null(columns: tuple[str, ...] | list[str], severity: str = CRITICAL) -> list[Any]:
    import great_expectations as gx

    return [
        gx.expectations.ExpectColumnValuesToNotBeNull(column=c, meta=meta(severity, "key column"))
        for c in columns
    ]


def volume_expectations(ctx: SuiteContext, severity: str = CRITICAL) -> list[Any]:
    """Row count >= ctx.min_rows and >= (1 - drop fraction) x the previous partition."""
    import great_expectations as gx

    out: list[Any] = []
    if ctx.min_rows > 0:
        out.append(
            gx.expectations.ExpectTableRowCountToBeBetween(
                min_value=int(ctx.min_rows),
                meta=meta(CRITICAL, "minimum rows (clean fraction of the raw input)"),
            )
        )
    if ctx.prev_rows:
        bound = int(math.ceil(ctx.prev_rows * (1.0 - ctx.volume_drop_fraction)))
        out.append(
            gx.expectations.ExpectTableRowCountToBeBetween(
                min_value=bound,
                meta=meta(
                    severity,
                    f"volume vs previous partition ({ctx.prev_rows} rows, "
                    f"max drop {ctx.volume_drop_fraction:.0%})",
                ),
            )
        )
    return out


def new_suite(name: str, expectations: list[Any]) -> Any:
    import great_expectations as gx

    # passing the list (not add_expectation) needs no active GX context
    return gx.ExpectationSuite(name=name, expectations=list(expectations))
