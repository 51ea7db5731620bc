"""The console's validation-export page: select studies, request a de-identified export, follow it, download it."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import messages
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET

from triage.core.exceptions import InvalidInput
from triage.core.permissions import request_user
from triage.governance import export
from triage.governance.console import admin_required
from triage.models import DateOption, ExportState, Finding, ValidationExport

LABEL_CHOICES = [("any", "Any"), ("present", "Present"), ("absent", "Absent")]
RESULT_CHOICES = [("any", "Any"), ("positive", "Positive"), ("negative", "Negative")]
SHOWN_EXPORTS = 50


class ExportForm(forms.Form):
    date_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    finding = forms.ChoiceField(choices=[("", "Any")] + list(Finding.choices), required=False)
    label = forms.ChoiceField(choices=LABEL_CHOICES, initial="any")
    result = forms.ChoiceField(choices=RESULT_CHOICES, initial="any", label="AI result")
    # No default: the admin states which Annex E date option the export follows.
    date_option = forms.ChoiceField(choices=DateOption.choices, widget=forms.RadioSelect, label="Dates")
    identified = forms.BooleanField(required=False, label="Identified export (keeps patient names and IDs)")
    reason = forms.CharField(required=False, max_length=500, widget=forms.Textarea(attrs={"rows": 2}))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("identified") and len((data.get("reason") or "").strip()) < export.MIN_REASON_LENGTH:
            self.add_error("reason", "An identified export needs a reason (at least 10 characters).")
        return data

    def filters(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "date_from": data["date_from"].isoformat() if data.get("date_from") else None,
            "date_to": data["date_to"].isoformat() if data.get("date_to") else None,
            "finding": data.get("finding") or "",
            "label": data["label"],
            "result": data["result"],
        }


@admin_required
def exports_page(request: HttpRequest) -> HttpResponse:
    form = ExportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            row = export.export_request(
                actor=request_user(request),
                filters=form.filters(),
                date_option=form.cleaned_data["date_option"],
                identified=form.cleaned_data["identified"],
                reason=form.cleaned_data.get("reason") or "",
            )
        except InvalidInput as err:
            form.add_error(None, err.message)
        else:
            messages.success(request, f"Export {row.pk} queued.")
            return redirect("console-exports")
    exports = list(ValidationExport.objects.select_related("requested_by")[:SHOWN_EXPORTS])
    context = {
        "form": form,
        "exports": exports,
        "active": any(e.state in (ExportState.QUEUED, ExportState.RUNNING) for e in exports),
    }
    return render(request, "triage/exports.html", context, status=400 if form.errors else 200)


@admin_required
@require_GET
def export_download(request: HttpRequest, pk: int) -> HttpResponse:
    row = get_object_or_404(ValidationExport, pk=pk)
    try:
        path = export.export_file_path(row)
    except export.ExportNotReady as err:
        raise Http404(err.message) from err
    export.export_download_record(actor=request_user(request), export=row)
    response = FileResponse(path.open("rb"), as_attachment=True, filename=path.name, content_type="application/zip")
    return cast(HttpResponse, response)  # admin_required is typed for HttpResponse; a streamed file works the same
