"""The console's shadow-mode pages: register a candidate, compare it with the live model, promote, roll back.

Admins only (``console.admin_required``); every change is one POST to a service that audits it.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from triage.core.exceptions import TriageError
from triage.core.permissions import request_user
from triage.governance import charts, shadow, shadow_services
from triage.governance.console import admin_required, csv_response
from triage.models import Finding, ModelConfig, ShadowModel, ShadowState


class RegisterForm(forms.Form):
    finding = forms.ChoiceField(choices=Finding.choices)
    weights_path = forms.CharField(max_length=500, help_text="Relative to TRIAGE_MODEL_DIR, or absolute")
    weights_sha256 = forms.CharField(max_length=64, label="SHA-256 of the weights")
    threshold = forms.FloatField(
        required=False, min_value=0.0, max_value=1.0, help_text="Empty: the threshold on the model card"
    )


@admin_required
@require_http_methods(["GET", "POST"])
def shadow_page(request: HttpRequest) -> HttpResponse:
    form = RegisterForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            candidate = shadow_services.shadow_register(
                finding=data["finding"], weights=data["weights_path"], sha256=data["weights_sha256"],
                threshold=data["threshold"], actor=request_user(request),
            )  # fmt: skip
        except TriageError as err:
            form.add_error(None, err.message)
        else:
            what = f"{candidate.name} {candidate.version}"
            messages.success(request, f"{what} now runs in shadow for {candidate.finding}.")
            return redirect("console-shadow-compare", pk=candidate.pk)
    context = {
        "form": form,
        "candidates": shadow.shadow_models(),
        "configs": ModelConfig.objects.order_by("finding"),
        "rollbacks": {f: shadow.shadow_latest_promoted(finding=f) for f in Finding.values},
    }
    return render(request, "triage/shadow.html", context, status=400 if form.errors else 200)


@admin_required
def shadow_compare(request: HttpRequest, pk: int) -> HttpResponse:
    candidate = get_object_or_404(ShadowModel, pk=pk)
    comparison = shadow.shadow_comparison(shadow_model=candidate)
    live = ModelConfig.objects.filter(finding=candidate.finding).first()
    context: dict[str, Any] = {
        "candidate": candidate,
        "live": live,
        "c": comparison,
        "scatter_svg": charts.scatter_chart(
            title=f"Scores on the same studies: live against {candidate.name} {candidate.version}",
            points=[(p.live_score, p.shadow_score) for p in comparison.pairs],
            x_label="live score", y_label="shadow score",
            x_line=live.threshold if live else None, y_line=candidate.threshold,
        ),
        "alerts_svg": charts.line_chart(
            title="Alerts per day, live and shadow",
            x_labels=[d.isoformat() for d, *_ in comparison.daily], y_label="alerts",
            series=[charts.Series("live", [row[2] for row in comparison.daily]),
                    charts.Series("shadow", [row[3] for row in comparison.daily])],
        ),
        "can_promote": candidate.state == ShadowState.SHADOW,
    }  # fmt: skip
    return render(request, "triage/shadow_compare.html", context)


@admin_required
def shadow_csv(request: HttpRequest, pk: int, table: str) -> HttpResponse:
    """What the page draws, as numbers: scores (no study identifiers), alerts per day, and the labelled rows."""
    candidate = get_object_or_404(ShadowModel, pk=pk)
    comparison = shadow.shadow_comparison(shadow_model=candidate)
    name = f"shadow-{candidate.finding}-{candidate.version}-{table}.csv"
    if table == "scores":
        rows: list[list] = [
            [p.live_score, p.shadow_score, p.live_positive, p.shadow_positive, p.label] for p in comparison.pairs
        ]
        return csv_response(name, ["live_score", "shadow_score", "live_flag", "shadow_flag", "label"], rows)
    if table == "daily":
        rows = [[d.isoformat(), n, live, sh] for d, n, live, sh in comparison.daily]
        return csv_response(name, ["day", "studies", "live_alerts", "shadow_alerts"], rows)
    if table == "labelled":
        rows = [_labelled_csv_row(r) for r in ([comparison.overall] if comparison.overall else [])]
        rows += [_labelled_csv_row(r) for r in comparison.subgroups]
        return csv_response(name, LABELLED_COLUMNS, rows)
    raise Http404("Unknown table")


LABELLED_COLUMNS = [
    "dimension", "group", "n", "n_positive", "live_auc", "shadow_auc", "auc_difference", "auc_difference_low",
    "auc_difference_high", "delong_p", "live_sensitivity", "shadow_sensitivity", "live_specificity",
    "shadow_specificity",
]  # fmt: skip


def _labelled_csv_row(row: shadow.LabelledRow) -> list:
    paired = row.paired
    diff = paired.difference if paired else None
    return [
        row.dimension, row.group, row.n, row.n_positive, row.live_auc, row.shadow_auc,
        diff.estimate if diff else None, diff.low if diff else None, diff.high if diff else None,
        paired.p_value if paired else None,
        *(shadow.nan_to_none(point.sensitivity.estimate) for point in (row.live_point, row.shadow_point)),
        *(shadow.nan_to_none(point.specificity.estimate) for point in (row.live_point, row.shadow_point)),
    ]  # fmt: skip


@admin_required
@require_POST
def shadow_promote(request: HttpRequest, pk: int) -> HttpResponse:
    back = reverse("console-shadow-compare", args=[pk])
    try:
        replaced = shadow_services.shadow_promote(shadow_model_id=pk, actor=request_user(request))
    except TriageError as err:
        messages.error(request, err.message)
        return redirect(back)
    candidate = ShadowModel.objects.get(pk=pk)
    messages.success(
        request,
        f"{candidate.name} {candidate.version} is live for {candidate.finding}; "
        f"{len(replaced)} open studies re-evaluated from its stored scores.",
    )
    return redirect(back)


@admin_required
@require_POST
def shadow_withdraw(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        candidate = shadow_services.shadow_withdraw(shadow_model_id=pk, actor=request_user(request))
    except TriageError as err:
        messages.error(request, err.message)
    else:
        messages.success(request, f"{candidate.name} {candidate.version} no longer runs in shadow.")
    return redirect("console-shadow")


@admin_required
@require_POST
def model_rollback(request: HttpRequest, finding: str) -> HttpResponse:
    if finding not in Finding.values:
        raise Http404("Unknown finding")
    try:
        replaced = shadow_services.model_rollback(finding=finding, actor=request_user(request))
    except TriageError as err:
        messages.error(request, err.message)
    else:
        live = ModelConfig.objects.get(finding=finding)
        what = f"{live.name} {live.version}"
        messages.success(request, f"{what} is live again for {finding}; {len(replaced)} open studies re-evaluated.")
    return redirect("console-shadow")
