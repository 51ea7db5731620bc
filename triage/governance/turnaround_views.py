"""The console's turnaround page and its CSV: arrival → claim → report, flagged against not flagged."""

from __future__ import annotations

from datetime import date

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from triage.governance import charts, turnaround
from triage.governance.console import _period, admin_required, csv_response


def _go_live(request: HttpRequest) -> date | None:
    try:
        return date.fromisoformat(request.GET.get("go_live", ""))
    except ValueError:
        return None


@admin_required
def turnaround_page(request: HttpRequest) -> HttpResponse:
    period, go_live = _period(request), _go_live(request)
    tables = turnaround.turnaround_report(period=period, go_live=go_live)
    periods = tables["periods"]
    chart = charts.line_chart(
        title=f"Median minutes from arrival to report per {period}",
        x_labels=periods.column("period"),
        y_label="minutes",
        series=[
            charts.Series("AI flagged", periods.column("flagged_median_min")),
            charts.Series("not flagged", periods.column("not_flagged_median_min")),
        ],
        empty_text="No reported studies in this window yet",
    )
    context = {"period": period, "go_live": go_live, "summary": tables["summary"], "chart": chart}
    return render(request, "triage/turnaround.html", context)


@admin_required
def turnaround_csv(request: HttpRequest, table: str) -> HttpResponse:
    tables = turnaround.turnaround_report(period=_period(request), go_live=_go_live(request))
    if table not in tables:
        raise Http404("Unknown table")
    return csv_response(f"turnaround-{table}.csv", tables[table].columns, tables[table].rows)
