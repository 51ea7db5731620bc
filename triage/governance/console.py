"""The admin console: local validation, the threshold picker, monitoring and ground-truth import.

Admins only: anonymous users go to the login page, signed-in users without the admin role get 403.
Every chart has a CSV export of exactly the numbers it draws (aggregates only, no patient data).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from triage.core.exceptions import TriageError
from triage.core.permissions import request_user, user_is_site_admin
from triage.governance import charts, monitoring, services, validation
from triage.models import DicomWebSource, Finding, ModelConfig

MAX_UPLOAD_BYTES = 5 * 1024 * 1024


def admin_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not user_is_site_admin(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return guarded


def _finding(code: str) -> str:
    if code not in Finding.values:
        raise Http404("Unknown finding")
    return code


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """A value safe to open in a spreadsheet: text that would start a formula gets a leading quote; numbers stay."""
    if value is None:
        return ""
    if isinstance(value, (int, float)) or not isinstance(value, str):
        return value
    if value.startswith(FORMULA_PREFIXES) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_response(filename: str, columns: list[str], rows: list[list]) -> HttpResponse:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([csv_cell(c) for c in columns])
    writer.writerows([[csv_cell(v) for v in row] for row in rows])
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# --- index -------------------------------------------------------------------------------------------------------


QUEUE_LABELS = {
    "jobs_queued": "Studies queued",
    "jobs_active": "Studies in progress",
    "outbox_pending": "Reports waiting",
    "outbox_sending": "Reports sending",
    "outbox_dead": "Reports failed (dead letter)",
}


def _queue_labels(depth: dict[str, int]) -> list[tuple[str, int]]:
    return [(QUEUE_LABELS.get(key, key), value) for key, value in depth.items()]


@admin_required
def console_index(request: HttpRequest) -> HttpResponse:
    context = {
        "configs": ModelConfig.objects.order_by("finding"),
        "versions": validation.model_versions(),
        "queue": _queue_labels(monitoring.queue_depth()),
        "alerts": monitoring.alerts_open(),
    }
    return render(request, "triage/console_index.html", context)


# --- validation and threshold picker ----------------------------------------------------------------------------


class PickForm(forms.Form):
    version = forms.CharField(required=False, max_length=32)
    threshold = forms.FloatField(required=False, min_value=0.0, max_value=1.0)
    prevalence = forms.FloatField(required=False, min_value=0.0, max_value=1.0)


class ApplyForm(forms.Form):
    threshold = forms.FloatField(min_value=0.0, max_value=1.0)
    source = forms.ModelChoiceField(DicomWebSource.objects.all(), required=False, empty_label="All sources (site-wide)")


def _version_for(finding: str, requested: str) -> str | None:
    versions = [v.model_version for v in validation.model_versions(finding=finding)]
    if requested in versions:
        return requested
    return versions[0] if versions else None


@admin_required
def validation_page(request: HttpRequest, finding: str) -> HttpResponse:
    finding = _finding(finding)
    form = PickForm(request.GET or None)
    data = form.cleaned_data if form.is_valid() else {}
    version = _version_for(finding, data.get("version") or "")
    current = validation.current_threshold(finding=finding)
    candidate = data.get("threshold")
    context: dict[str, Any] = {
        "finding": finding,
        "finding_label": Finding(finding).label,
        "version": version,
        "versions": validation.model_versions(finding=finding),
        "current_threshold": current,
        "form": form,
        "apply_form": ApplyForm(initial={"threshold": candidate if candidate is not None else current}),
        "config": ModelConfig.objects.filter(finding=finding).first(),
    }
    if version:
        summary = validation.validation_summary(finding=finding, model_version=version)
        context["summary"] = summary
        context["roc_svg"] = _roc_svg(summary)
        context["pick"] = validation.threshold_pick(
            finding=finding,
            model_version=version,
            threshold=current if candidate is None else candidate,
            prevalence=data.get("prevalence"),
        )
    return render(request, "triage/validation.html", context)


def _roc_svg(summary: validation.ValidationSummary) -> str:
    if summary.roc is None:
        return charts.roc_chart(title=f"ROC, {summary.model_version}", fpr=[], tpr=[])
    point = None
    if summary.point is not None:
        point = (1.0 - summary.point.specificity.estimate, summary.point.sensitivity.estimate)
    auc = f"AUC {summary.auc.estimate:.3f}" if summary.auc else ""
    return charts.roc_chart(
        title=f"ROC, {summary.finding} {summary.model_version} ({summary.n} studies, {auc})",
        fpr=summary.roc.fpr.tolist(),
        tpr=summary.roc.tpr.tolist(),
        point=point,
    )


@admin_required
def validation_csv(request: HttpRequest, finding: str, table: str) -> HttpResponse:
    finding = _finding(finding)
    version = _version_for(finding, request.GET.get("version", ""))
    if version is None:
        raise Http404("No results for this finding yet")
    summary = validation.validation_summary(finding=finding, model_version=version)
    name = f"{finding}-{version}-{table}.csv"
    if table == "roc":
        roc = summary.roc
        rows = [] if roc is None else [[t, f, s] for t, f, s in zip(roc.thresholds, roc.fpr, roc.tpr, strict=True)]
        return csv_response(name, ["threshold", "false_positive_rate", "sensitivity"], rows)
    if table == "subgroups":
        rows = [
            [r.dimension, r.group, r.n, r.n_positive, r.auc, r.sensitivity.estimate, r.sensitivity.low,
             r.sensitivity.high, r.specificity.estimate, r.specificity.low, r.specificity.high]
            for r in summary.subgroups
        ]  # fmt: skip
        columns = ["dimension", "group", "n", "n_positive", "auc", "sensitivity", "sensitivity_low",
                   "sensitivity_high", "specificity", "specificity_low", "specificity_high"]  # fmt: skip
        return csv_response(name, columns, rows)
    raise Http404("Unknown table")


@admin_required
@require_POST
def threshold_apply(request: HttpRequest, finding: str) -> HttpResponse:
    finding = _finding(finding)
    config = get_object_or_404(ModelConfig, finding=finding)
    form = ApplyForm(request.POST)
    back = reverse("console-validation", args=[finding])
    if not form.is_valid():
        messages.error(request, "The threshold must be a number between 0 and 1.")
        return redirect(back)
    source = form.cleaned_data["source"]
    try:
        flipped = services.model_threshold_set(
            model_config=config, threshold=form.cleaned_data["threshold"], source=source, actor=request_user(request)
        )
    except TriageError as err:
        messages.error(request, err.message)
        return redirect(back)
    where = f"for {source.name}" if source else "site-wide"
    messages.success(
        request, f"Threshold {form.cleaned_data['threshold']:.3f} applied {where}; {len(flipped)} open flags changed."
    )
    return redirect(f"{back}?threshold={form.cleaned_data['threshold']}")


# --- ground truth ------------------------------------------------------------------------------------------------


class ImportForm(forms.Form):
    file = forms.FileField(help_text="CSV: accession_number or study_instance_uid, finding, label")

    def clean_file(self) -> str:
        upload = self.cleaned_data["file"]
        if upload.size > MAX_UPLOAD_BYTES:
            raise forms.ValidationError(f"The file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB.")
        try:
            return upload.read().decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise forms.ValidationError("The file is not UTF-8 text.") from err


@admin_required
@require_http_methods(["GET", "POST"])
def ground_truth_import(request: HttpRequest) -> HttpResponse:
    report, form = None, ImportForm()
    if request.method == "POST" and request.POST.get("action") == "feedback":
        count = validation.ground_truth_from_feedback(actor=request_user(request))
        messages.success(request, f"{count} labels taken from radiologists' feedback.")
        return redirect("console-ground-truth")
    if request.method == "POST":
        form = ImportForm(request.POST, request.FILES)
        if form.is_valid():
            report = validation.ground_truth_import_csv(text=form.cleaned_data["file"], actor=request_user(request))
    status = 400 if report is not None and report.errors and not (report.created or report.updated) else 200
    return render(request, "triage/ground_truth_import.html", {"form": form, "report": report}, status=status)


# --- monitoring --------------------------------------------------------------------------------------------------


def _period(request: HttpRequest) -> str:
    period = request.GET.get("period", "day")
    return period if period in monitoring.PERIODS else "day"


def _monitoring_tables(finding: str, period: str) -> tuple[dict[str, monitoring.Table], monitoring.Drift]:
    drift = monitoring.drift_report(finding=finding, period=period)
    histogram = monitoring.Table(["bin_low", "bin_high", "studies", "baseline_share"])
    for i, count in enumerate(drift.histogram):
        base = drift.baseline_histogram[i] if drift.baseline_histogram else None
        histogram.rows.append([monitoring.SCORE_EDGES[i], monitoring.SCORE_EDGES[i + 1], count, base])
    queue = monitoring.Table(["queue", "depth"], [[k, v] for k, v in monitoring.queue_depth().items()])
    return {
        "volume": monitoring.volume_table(finding=finding, period=period),
        "drift": drift.table,
        "histogram": histogram,
        "agreement": monitoring.agreement_table(finding=finding, period=period),
        "latency": monitoring.latency_table(period=period),
        "failures": monitoring.failure_table(period=period),
        "queue": queue,
    }, drift


def _monitoring_charts(tables: dict[str, monitoring.Table], drift: monitoring.Drift, period: str) -> list[dict]:
    x = tables["volume"].column("period")
    s = charts.Series
    latency = tables["latency"]
    failures = tables["failures"]
    return [
        {"key": "volume", "svg": charts.bar_chart(
            title=f"Studies per {period}", categories=x, series=[s("studies", tables["volume"].column("studies"))])},
        {"key": "volume", "svg": charts.line_chart(
            title=f"Positive rate per {period}", x_labels=x,
            series=[s("positive rate", tables["volume"].column("positive_rate"))], y_label="share")},
        {"key": "histogram", "svg": charts.histogram_chart(
            title=f"Score distribution, {drift.model_version or 'no model yet'}, against the baseline",
            edges=monitoring.SCORE_EDGES, counts=drift.histogram, baseline=drift.baseline_histogram)},
        {"key": "drift", "svg": charts.line_chart(
            title=f"Score drift (PSI) per {period}", x_labels=x, series=[s("PSI", drift.table.column("psi"))],
            reference=0.25, reference_label="alert above 0.25",
            empty_text=f"No {period} with {monitoring.MIN_PSI_CASES} studies and a baseline yet")},
        {"key": "agreement", "svg": charts.line_chart(
            title=f"Agreement with radiologists per {period}", x_labels=x, y_label="share",
            series=[s("agreement", tables["agreement"].column("agreement")),
                    s("95% low", tables["agreement"].column("agreement_low")),
                    s("95% high", tables["agreement"].column("agreement_high"))])},
        {"key": "latency", "svg": charts.line_chart(
            title=f"Seconds from arrival to result and to report per {period}", x_labels=x, y_label="seconds",
            series=[s(c.replace("_", " "), latency.column(c)) for c in latency.columns[1:5]])},
        {"key": "latency", "svg": charts.line_chart(
            title=f"Seconds per pipeline stage (p50) per {period}", x_labels=x, y_label="seconds",
            series=[s(c[6:-4], latency.column(c)) for c in latency.columns[5:] if c.endswith("_p50")])},
        {"key": "failures", "svg": charts.bar_chart(
            title=f"Failures and rejections by reason per {period}", categories=x,
            series=[s(c, failures.column(c)) for c in failures.columns[1:]])},
    ]  # fmt: skip


@admin_required
def monitoring_page(request: HttpRequest) -> HttpResponse:
    finding = request.GET.get("finding", Finding.ICH)
    finding = finding if finding in Finding.values else Finding.ICH
    period = _period(request)
    tables, drift = _monitoring_tables(finding, period)
    context: dict[str, Any] = {
        "finding": finding,
        "period": period,
        "findings": Finding.choices,
        "charts": _monitoring_charts(tables, drift, period),
        "drift": drift,
        "queue": _queue_labels(monitoring.queue_depth()),
        "alerts": monitoring.alerts_open(),
        "flag_window": monitoring.flag_rate_window(finding=finding, size=settings.TRIAGE_FLAG_RATE_WINDOW),
    }
    for chart in context["charts"]:
        chart["title"] = _svg_title(chart["svg"])
    return render(request, "triage/monitoring.html", context)


def _svg_title(svg: str) -> str:
    """The chart's own (escaped) title, shown above it as well."""
    return svg.split("<title", 1)[1].split(">", 1)[1].split("</title>", 1)[0]


@admin_required
def monitoring_csv(request: HttpRequest, table: str) -> HttpResponse:
    finding = request.GET.get("finding", Finding.ICH)
    finding = finding if finding in Finding.values else Finding.ICH
    period = _period(request)
    tables, _ = _monitoring_tables(finding, period)
    if table not in tables:
        raise Http404("Unknown table")
    return csv_response(f"{finding}-{table}-{period}.csv", tables[table].columns, tables[table].rows)
