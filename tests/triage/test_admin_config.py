"""Configuration in the admin: admins only (403 for radiologists), every change audited, thresholds applied live."""

from __future__ import annotations

import hashlib
from unittest import mock

import pytest
from django.contrib import admin
from django.forms import MultiWidget
from django.test import Client
from django.urls import reverse

from tests.factories import ResultFactory, SeriesFactory, SourceFactory, StudyFactory, UserFactory
from triage.admin import AuditedModelAdmin
from triage.core import services as core_services
from triage.governance import services
from triage.models import AuditEvent, FhirEndpoint, ModelConfig, OutboxMessage, RoutingRule, ThresholdOverride, User
from worklist.models import ItemStatus, WorklistItem

pytestmark = pytest.mark.django_db

CONFIG_MODELS = ("dicomwebsource", "fhirendpoint", "modelconfig", "routingrule", "user", "groundtruth")


@pytest.fixture
def model_config(db):
    return ModelConfig.objects.create(finding="ich", name="ich2d", version="1.0", threshold=0.5)


def admin_urls() -> list[str]:
    urls = [reverse("admin:index")]
    for model in admin.site._registry:
        meta = model._meta
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_add"))
    return urls


def change_form_data(client: Client, page: str, /, **changes) -> dict:
    """The change form as the browser would submit it unchanged, with ``changes`` applied."""
    form = client.get(page).context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if isinstance(field.widget, MultiWidget):
            for i, part in enumerate(field.widget.decompress(value)):
                data[f"{name}_{i}"] = "" if part is None else str(part)
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        elif isinstance(value, list | tuple):
            data[name] = list(value)
        elif value is not None:
            data[name] = value
    for name, value in changes.items():
        if value is False:
            data.pop(name, None)
        else:
            data[name] = "on" if value is True else value
    data["_save"] = "Save"
    return data


def post_change(client: Client, obj, **changes):
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    response = client.post(url, change_form_data(client, url, **changes))
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    return response


# --- who gets in -------------------------------------------------------------------------------------------------


def test_radiologist_is_refused_on_every_admin_page(rad_web):
    statuses = {url: rad_web.get(url).status_code for url in admin_urls()}
    assert set(statuses.values()) == {403}, statuses


def test_radiologist_is_refused_on_the_admin_login_page_instead_of_looping(rad_web):
    assert rad_web.get(reverse("admin:login")).status_code == 403


def test_anonymous_user_is_sent_to_log_in(client):
    response = client.get(reverse("admin:triage_modelconfig_changelist"))
    assert (response.status_code, "/login/" in response["Location"]) == (302, True)


def test_admin_by_role_sees_every_admin_page(admin_web):
    statuses = {url: admin_web.get(url).status_code for url in admin_urls()}
    refused = {url: s for url, s in statuses.items() if s != 200 and not url.endswith("/add/")}
    assert refused == {}


def test_every_config_model_is_audited():
    audited = {m._meta.model_name for m, ma in admin.site._registry.items() if isinstance(ma, AuditedModelAdmin)}
    assert set(CONFIG_MODELS) <= audited


# --- audit of every change ---------------------------------------------------------------------------------------


def test_source_change_is_audited_with_old_and_new_values(admin_web, site_admin):
    source = SourceFactory(name="pacs-a", url="http://127.0.0.1:8042/dicom-web")
    post_change(admin_web, source, url="http://127.0.0.1:9042/dicom-web", enabled=False)
    event = AuditEvent.objects.get(action="admin.dicomwebsource.change")
    assert (event.actor, event.object_id) == (site_admin, str(source.pk))
    assert event.data["changes"] == {
        "url": {"old": "http://127.0.0.1:8042/dicom-web", "new": "http://127.0.0.1:9042/dicom-web"},
        "enabled": {"old": True, "new": False},
    }


def test_unchanged_save_writes_no_audit_row(admin_web):
    source = SourceFactory(name="pacs-a")
    post_change(admin_web, source)
    assert not AuditEvent.objects.filter(action__startswith="admin.").exists()


def test_routing_rule_add_and_delete_are_audited(admin_web):
    response = admin_web.post(
        reverse("admin:triage_routingrule_add"),
        {"name": "cta", "model": "lvo", "order": "10", "enabled": "on", "modality": "CT", "contrast": "required",
         "require_image_type_original": "on", "_save": "Save"},
    )  # fmt: skip
    assert response.status_code == 302
    rule = RoutingRule.objects.get(name="cta")
    admin_web.post(reverse("admin:triage_routingrule_delete", args=[rule.pk]), {"post": "yes"})
    added, deleted = (AuditEvent.objects.get(action=f"admin.routingrule.{verb}") for verb in ("add", "delete"))
    assert added.data["changes"]["model"] == {"old": None, "new": "lvo"}
    assert deleted.data["changes"]["contrast"] == {"old": "required", "new": None}
    assert not RoutingRule.objects.exists()


def test_emr_endpoint_change_is_audited(admin_web):
    endpoint = FhirEndpoint.objects.create(
        name="emr", base_url="http://127.0.0.1:8103/fhir", secret_env="TRIAGE_EMR_TOKEN"
    )
    post_change(admin_web, endpoint, timeout_seconds="5.0")
    event = AuditEvent.objects.get(action="admin.fhirendpoint.change")
    assert event.data["changes"] == {"timeout_seconds": {"old": 15.0, "new": 5.0}}


def test_model_version_and_weights_change_is_audited(admin_web, model_config):
    post_change(admin_web, model_config, version="1.1", weights_sha256="ab" * 32)
    event = AuditEvent.objects.get(action="admin.modelconfig.change")
    assert event.data["changes"]["version"] == {"old": "1.0", "new": "1.1"}
    assert event.data["changes"]["weights_sha256"] == {"old": "", "new": "ab" * 32}


def test_role_change_keeps_staff_status_in_step_and_is_audited(admin_web, radiologist, site_admin):
    post_change(admin_web, radiologist, role="admin")
    radiologist.refresh_from_db()
    assert (radiologist.role, radiologist.is_staff) == ("admin", True)
    event = AuditEvent.objects.filter(action="user.role_set", object_id=str(radiologist.pk)).get()
    assert (event.actor, event.data["old"]["role"], event.data["new"]["is_staff"]) == (site_admin, "radiologist", True)


def test_demoted_admin_loses_admin_access(site_admin, admin_web):
    other = core_services.user_role_set(user=UserFactory(username="other"), role="admin", actor=site_admin)
    post_change(admin_web, other, role="radiologist")
    other.refresh_from_db()
    assert (other.role, other.is_staff, other.is_superuser) == ("radiologist", False, False)


def test_password_change_is_audited_without_any_hash(admin_web, radiologist):
    url = reverse("admin:auth_user_password_change", args=[radiologist.pk])
    response = admin_web.post(url, {"password1": "another-long-pass-42", "password2": "another-long-pass-42"})
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="admin.user.change", object_id=str(radiologist.pk))
    assert event.data["changes"] == {"password": {"old": "(redacted)", "new": "(changed)"}}
    assert "pbkdf2" not in str(AuditEvent.objects.values_list("data", flat=True))


def test_user_added_in_the_admin_gets_staff_from_its_role(admin_web):
    response = admin_web.post(
        reverse("admin:triage_user_add"),
        {"username": "newadmin", "role": "admin", "password1": "long-enough-pass-42",
         "password2": "long-enough-pass-42", "usable_password": "true", "_save": "Save"},
    )  # fmt: skip
    assert response.status_code == 302
    assert User.objects.get(username="newadmin").is_staff is True
    add = AuditEvent.objects.get(action="admin.user.add")
    assert add.data["changes"]["password"] == {"old": "(redacted)", "new": "(changed)"}


# --- thresholds --------------------------------------------------------------------------------------------------


def open_result(score: float, *, source=None, status=ItemStatus.WAITING, threshold: float = 0.5):
    study = StudyFactory(source=source)
    result = ResultFactory(series=SeriesFactory(study=study), score=score, threshold=threshold)
    WorklistItem.objects.create(study=study, status=status, received_at=study.received_at)
    return result


def test_threshold_edit_in_admin_goes_through_the_service_and_is_audited(admin_web, model_config, site_admin):
    with mock.patch("triage.governance.services.model_threshold_set", wraps=services.model_threshold_set) as spy:
        post_change(admin_web, model_config, threshold="0.8")
    assert spy.call_args.kwargs["threshold"] == 0.8
    event = AuditEvent.objects.get(action="model.threshold_set")
    assert (event.actor, event.data["old"], event.data["new"]) == (site_admin, 0.5, 0.8)
    assert not AuditEvent.objects.filter(action="admin.modelconfig.change").exists()


def test_threshold_change_re_evaluates_open_results_only(model_config, site_admin):
    flips, stays, reported = open_result(0.6), open_result(0.9), open_result(0.6, status=ItemStatus.REPORTED)
    flipped = services.model_threshold_set(model_config=model_config, threshold=0.7, actor=site_admin)
    assert [r.pk for r in flipped] == [flips.pk]
    for result in (flips, stays, reported):
        result.refresh_from_db()
    assert (flips.positive, flips.threshold) == (False, 0.7)
    assert (stays.positive, stays.threshold) == (True, 0.7)
    assert (reported.positive, reported.threshold) == (True, 0.5)


def test_site_threshold_spares_sources_with_their_own_override(model_config, site_admin):
    own = SourceFactory(name="own")
    ThresholdOverride.objects.create(model=model_config, source=own, threshold=0.4)
    governed, overridden = open_result(0.6), open_result(0.6, source=own)
    services.model_threshold_set(model_config=model_config, threshold=0.7, actor=site_admin)
    governed.refresh_from_db()
    overridden.refresh_from_db()
    assert (governed.positive, overridden.positive) == (False, True)


def test_source_override_applies_to_that_source_and_removing_it_restores_the_site_threshold(model_config, site_admin):
    source = SourceFactory(name="er-ct")
    there, elsewhere = open_result(0.6, source=source), open_result(0.6)
    services.model_threshold_set(model_config=model_config, threshold=0.65, source=source, actor=site_admin)
    there.refresh_from_db()
    elsewhere.refresh_from_db()
    assert (there.positive, there.threshold, elsewhere.positive) == (False, 0.65, True)
    services.model_threshold_set(model_config=model_config, threshold=None, source=source, actor=site_admin)
    there.refresh_from_db()
    assert (there.positive, there.threshold) == (True, 0.5)
    assert not ThresholdOverride.objects.exists()
    old_new = list(AuditEvent.objects.filter(action="model.threshold_set").values_list("data__old", "data__new"))
    assert sorted(old_new, key=str) == sorted([(None, 0.65), (0.65, None)], key=str)


def test_threshold_override_added_in_admin_applies_at_once(admin_web, model_config):
    source = SourceFactory(name="er-ct")
    result = open_result(0.6, source=source)
    response = admin_web.post(
        reverse("admin:triage_thresholdoverride_add"),
        {"model": model_config.pk, "source": source.pk, "threshold": "0.75", "_save": "Save"},
    )
    assert response.status_code == 302
    result.refresh_from_db()
    assert (result.positive, ThresholdOverride.objects.get().threshold) == (False, 0.75)
    assert AuditEvent.objects.get(action="model.threshold_set").data["source"] == "er-ct"


def test_threshold_change_resyncs_the_worklist_and_amends_flipped_reports(
    model_config, site_admin, django_capture_on_commit_callbacks
):
    FhirEndpoint.objects.create(name="emr", base_url="http://127.0.0.1:9/fhir")
    flips, stays = open_result(0.6), open_result(0.9)
    with (
        mock.patch("worklist.events.broadcast") as broadcast,
        django_capture_on_commit_callbacks(execute=True),
    ):
        services.model_threshold_set(model_config=model_config, threshold=0.7, actor=site_admin)
    flipped_item = WorklistItem.objects.get(study=flips.study)
    assert (flipped_item.critical, WorklistItem.objects.get(study=stays.study).critical) == (False, True)
    assert broadcast.call_count == 2  # one event per open item of the finding
    messages = OutboxMessage.objects.filter(study=flips.study)
    assert messages.count() == 1
    assert not OutboxMessage.objects.filter(study=stays.study).exists()


def test_threshold_outside_zero_to_one_is_refused(model_config, site_admin):
    from triage.core.exceptions import InvalidInput

    with pytest.raises(InvalidInput):
        services.model_threshold_set(model_config=model_config, threshold=1.2, actor=site_admin)


def test_weights_must_match_their_pinned_sha256(admin_web, model_config, tmp_path):
    weights = tmp_path / "ich.pt"
    weights.write_bytes(b"weights")
    url = reverse("admin:triage_modelconfig_change", args=[model_config.pk])
    wrong = admin_web.post(url, change_form_data(admin_web, url, weights_path=str(weights), weights_sha256="0" * 64))
    assert "differs" in str(wrong.context["adminform"].form.errors)
    good = hashlib.sha256(b"weights").hexdigest()
    post_change(admin_web, model_config, weights_path=str(weights), weights_sha256=good.upper())
    model_config.refresh_from_db()
    assert (model_config.weights_path, model_config.weights_sha256) == (str(weights), good)
