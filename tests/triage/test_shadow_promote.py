"""Registering, comparing, promoting and rolling back shadow models from the console: admins only, one audited
POST each, and promotion and rollback re-rank the open worklist and amend the EMR reports from stored scores."""

from __future__ import annotations

import json

import pytest

from inference.modelcard import sha256_file
from tests.factories import ResultFactory, SeriesFactory, StudyFactory
from triage.fhir.delivery import outbox_deliver_due
from triage.fhir.outbox import outbox_enqueue_report
from triage.governance.shadow import shadow_comparison
from triage.models import (
    AuditEvent,
    GroundTruth,
    ModelConfig,
    OutboxMessage,
    ReportStatus,
    ShadowModel,
    ShadowResult,
    ShadowState,
    TriageResult,
)
from worklist.models import ItemStatus, WorklistItem
from worklist.services import worklist_item_sync

pytestmark = pytest.mark.django_db

SHA = "ab" * 32


def candidate(**fields) -> ShadowModel:
    values = {"finding": "ich", "name": "ich-next", "version": "2.0", "weights_path": "next.pt",
              "weights_sha256": SHA, "threshold": 0.4, **fields}  # fmt: skip
    return ShadowModel.objects.create(**values)


def study_read_by_both(shadow_model: ShadowModel, live_score: float, shadow_score: float | None, **study_fields):
    study = StudyFactory(**study_fields)
    live = ResultFactory(series=SeriesFactory(study=study), score=live_score, threshold=0.5, model_name="ich2d",
                         model_version="1.0")  # fmt: skip
    if shadow_score is not None:
        ShadowResult.objects.create(
            shadow_model=shadow_model, study=study, series=live.series, finding="ich", status="done",
            model_name=shadow_model.name, model_version=shadow_model.version, score=shadow_score,
            threshold=shadow_model.threshold, positive=shadow_score >= shadow_model.threshold, seconds=0.25,
            details={"key_slice": 3},
        )  # fmt: skip
    worklist_item_sync(study=study)
    return study


@pytest.fixture
def site(db, endpoint):
    """Live ich2d 1.0 at 0.5; candidate 2.0 at 0.4 in shadow. Study a: live 0.3, shadow 0.8 (the shadow flags it);
    b: live 0.6, shadow 0.2 (only live flags it); c: live 0.7, never read by the shadow; d: reported, shadow 0.9.
    Every report has reached the EMR."""
    ModelConfig.objects.create(finding="ich", name="ich2d", version="1.0", threshold=0.5)
    shadow = candidate()
    studies = {
        "a": study_read_by_both(shadow, 0.3, 0.8),
        "b": study_read_by_both(shadow, 0.6, 0.2),
        "c": study_read_by_both(shadow, 0.7, None),
        "d": study_read_by_both(shadow, 0.1, 0.9),
    }
    WorklistItem.objects.filter(study=studies["d"]).update(status=ItemStatus.REPORTED)
    for study in studies.values():
        outbox_enqueue_report(study=study, finding="ich")
    assert outbox_deliver_due(limit=10).sent == 4
    return shadow, studies


def current(study) -> TriageResult:
    return TriageResult.objects.get(study=study, finding="ich", is_current=True)


def new_reports(study) -> list[OutboxMessage]:
    return list(OutboxMessage.objects.filter(study=study).exclude(report_version=1).order_by("report_version"))


def test_promote_makes_the_shadow_live_and_re_evaluates_open_studies_from_its_stored_scores(site, admin_web):
    shadow, studies = site

    response = admin_web.post(f"/console/shadow/{shadow.pk}/promote/")

    config = ModelConfig.objects.get(finding="ich")
    shadow.refresh_from_db()
    a, b = current(studies["a"]), current(studies["b"])
    assert response.status_code == 302
    assert (config.name, config.version, config.weights_sha256, config.threshold) == ("ich-next", "2.0", SHA, 0.4)
    assert shadow.state == ShadowState.PROMOTED
    assert shadow.previous_live["version"] == "1.0"
    assert (a.model_version, a.score, a.positive, a.threshold) == ("2.0", 0.8, True, 0.4)
    assert (b.model_version, b.score, b.positive) == ("2.0", 0.2, False)
    assert current(studies["c"]).model_version == "1.0"  # no stored shadow score: its live result stands
    assert current(studies["d"]).model_version == "1.0"  # reported: keeps what it was read with


def test_promote_re_ranks_the_worklist_and_amends_the_changed_reports(site, admin_web):
    shadow, studies = site

    admin_web.post(f"/console/shadow/{shadow.pk}/promote/")

    items = {key: WorklistItem.objects.get(study=study) for key, study in studies.items()}
    assert (items["a"].critical, items["b"].critical) == (True, False)
    assert items["a"].sort_key > items["b"].sort_key
    amended = {key: [(m.report_status, m.reason) for m in new_reports(study)] for key, study in studies.items()}
    assert amended == {
        "a": [(ReportStatus.AMENDED, "model_promoted")],
        "b": [(ReportStatus.AMENDED, "model_promoted")],
        "c": [],
        "d": [],
    }
    assert "ich-next" in json.dumps(new_reports(studies["a"])[0].payload)


def test_promote_is_audited_with_its_actor_and_counts(site, admin_web, site_admin):
    shadow, _ = site

    admin_web.post(f"/console/shadow/{shadow.pk}/promote/")

    event = AuditEvent.objects.get(action="model.promoted")
    assert event.actor == site_admin
    assert (event.object_type, event.object_id) == ("ShadowModel", str(shadow.pk))
    assert {k: event.data[k] for k in ("finding", "replaced", "flipped", "kept")} == {
        "finding": "ich", "replaced": 2, "flipped": 2, "kept": 1,
    }  # fmt: skip
    assert (event.data["from"]["version"], event.data["to"]["version"]) == ("1.0", "2.0")


def test_a_radiologist_cannot_promote_or_roll_back(site, rad_web):
    shadow, studies = site

    promote = rad_web.post(f"/console/shadow/{shadow.pk}/promote/")
    rollback = rad_web.post("/console/shadow/rollback/ich/")
    page = rad_web.get(f"/console/shadow/{shadow.pk}/")

    assert (promote.status_code, rollback.status_code, page.status_code) == (403, 403, 403)
    assert ModelConfig.objects.get(finding="ich").version == "1.0"
    assert ShadowModel.objects.get().state == ShadowState.SHADOW
    assert not AuditEvent.objects.filter(action__in=["model.promoted", "model.rolled_back"]).exists()


def test_promote_needs_a_post(site, admin_web):
    shadow, _ = site

    assert admin_web.get(f"/console/shadow/{shadow.pk}/promote/").status_code == 405


def test_a_version_promoted_once_cannot_be_promoted_again(site, admin_web):
    shadow, _ = site
    admin_web.post(f"/console/shadow/{shadow.pk}/promote/")

    response = admin_web.post(f"/console/shadow/{shadow.pk}/promote/", follow=True)

    assert "not in shadow" in response.content.decode()
    assert AuditEvent.objects.filter(action="model.promoted").count() == 1


def test_rollback_restores_the_previous_live_version_and_its_results(site, admin_web, site_admin):
    shadow, studies = site
    admin_web.post(f"/console/shadow/{shadow.pk}/promote/")

    response = admin_web.post("/console/shadow/rollback/ich/")

    config = ModelConfig.objects.get(finding="ich")
    shadow.refresh_from_db()
    event = AuditEvent.objects.get(action="model.rolled_back")
    assert response.status_code == 302
    assert (config.name, config.version, config.weights_sha256, config.threshold) == ("ich2d", "1.0", "", 0.5)
    assert shadow.state == ShadowState.ROLLED_BACK
    assert (current(studies["a"]).score, current(studies["a"]).positive) == (0.3, False)
    assert (current(studies["b"]).score, current(studies["b"]).positive) == (0.6, True)
    assert WorklistItem.objects.get(study=studies["b"]).critical
    assert [m.reason for m in new_reports(studies["a"])] == ["model_promoted", "model_rolled_back"]
    assert (event.actor, event.data["replaced"], event.data["to"]["version"]) == (site_admin, 2, "1.0")


def test_rollback_without_a_promotion_changes_nothing(site, admin_web):
    response = admin_web.post("/console/shadow/rollback/ich/", follow=True)

    assert "No promotion" in response.content.decode()
    assert ModelConfig.objects.get(finding="ich").version == "1.0"
    assert not AuditEvent.objects.filter(action="model.rolled_back").exists()


def test_the_comparison_reproduces_the_hand_computed_figures(db):
    """The six labelled studies of test_shadow_stats: paired DeLong z = 2/sqrt(5), p = 0.3711; flags at live 0.5 and
    shadow 0.4 agree on 4 of 6 studies."""
    ModelConfig.objects.create(finding="ich", name="ich2d", version="1.0", threshold=0.5)
    shadow = candidate()
    for label, live, shadow_score in zip([1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.3, 0.4, 0.2, 0.1],
                                         [0.6, 0.5, 0.4, 0.7, 0.3, 0.2], strict=True):  # fmt: skip
        study = study_read_by_both(shadow, live, shadow_score, manufacturer="ACME")
        GroundTruth.objects.create(study=study, finding="ich", label=bool(label), source="csv")

    comparison = shadow_comparison(shadow_model=shadow)

    paired = comparison.overall.paired
    assert len(comparison.pairs) == 6
    # Live flags: 0.9, 0.8 (2); shadow at 0.4: 0.6, 0.5, 0.4, 0.7 (4). Both: 2; shadow only: 2; neither: 2.
    agreement = comparison.agreement
    table = (agreement.both_positive, agreement.live_only, agreement.shadow_only, agreement.both_negative)
    assert table == (2, 0, 2, 2)
    assert agreement.kappa.estimate == pytest.approx((4 / 6 - 4 / 9) / (1 - 4 / 9))  # p_o 2/3, p_e 1/3*2/3+2/3*1/3
    assert (paired.live.estimate, paired.shadow.estimate) == pytest.approx((8 / 9, 2 / 3))
    assert paired.p_value == pytest.approx(0.371093, abs=1e-6)
    assert comparison.overall.shadow_point.sensitivity.estimate == 1.0
    assert comparison.overall.live_point.sensitivity.estimate == pytest.approx(2 / 3)
    assert [row.group for row in comparison.subgroups if row.dimension == "Scanner"] == ["ACME"]
    assert comparison.cost.seconds_p50 == 0.25


def test_the_comparison_page_shows_the_figures_to_an_admin(db, admin_web):
    ModelConfig.objects.create(finding="ich", name="ich2d", version="1.0", threshold=0.5)
    shadow = candidate()
    for label, live, shadow_score in [(1, 0.9, 0.6), (1, 0.8, 0.5), (1, 0.3, 0.4), (0, 0.4, 0.7), (0, 0.2, 0.3),
                                      (0, 0.1, 0.2)]:  # fmt: skip
        study = study_read_by_both(shadow, live, shadow_score)
        GroundTruth.objects.create(study=study, finding="ich", label=bool(label), source="csv")

    page = admin_web.get(f"/console/shadow/{shadow.pk}/").content.decode()
    scores_csv = admin_web.get(f"/console/shadow/{shadow.pk}/scores.csv").content.decode()
    labelled_csv = admin_web.get(f"/console/shadow/{shadow.pk}/labelled.csv").content.decode().splitlines()

    assert 'id="kappa">0.400 (' in page
    assert '<td class="delong-p">0.371</td>' in page
    assert labelled_csv[1].startswith("All,all labelled studies,6,3,0.888")
    assert 'id="promote"' in page
    assert "Scores on the same studies" in page
    assert scores_csv.splitlines()[0] == "live_score,shadow_score,live_flag,shadow_flag,label"
    assert len(scores_csv.splitlines()) == 7
    assert "Synthetic" not in page + scores_csv
    assert "ACC" not in scores_csv


# --- registration --------------------------------------------------------------------------------------------------


@pytest.fixture
def weights_on_disk(settings, tmp_path):
    settings.TRIAGE_MODEL_DIR = str(tmp_path)
    weights = tmp_path / "ich-next.pt"
    weights.write_bytes(b"not really torch, but pinned all the same")
    card = {"name": "ich-next", "version": "2.0", "finding": "ich", "threshold": 0.42, "sha256": sha256_file(weights)}
    (tmp_path / "ich-next.card.json").write_text(json.dumps(card), encoding="utf-8")
    return weights


def test_an_admin_registers_pinned_weights_with_their_card_as_shadow(db, admin_web, weights_on_disk, site_admin):
    digest = sha256_file(weights_on_disk)

    response = admin_web.post("/console/shadow/", {"finding": "ich", "weights_path": "ich-next.pt",
                                                   "weights_sha256": digest})  # fmt: skip

    shadow = ShadowModel.objects.get()
    assert response.status_code == 302
    assert (shadow.name, shadow.version, shadow.threshold, shadow.weights_sha256) == ("ich-next", "2.0", 0.42, digest)
    assert shadow.card["finding"] == "ich"
    assert AuditEvent.objects.get(action="model.shadow_registered").actor == site_admin


def test_weights_whose_hash_differs_are_refused(db, admin_web, weights_on_disk):
    response = admin_web.post("/console/shadow/", {"finding": "ich", "weights_path": "ich-next.pt",
                                                   "weights_sha256": "0" * 64})  # fmt: skip

    assert response.status_code == 400
    assert "differs" in response.content.decode()
    assert not ShadowModel.objects.exists()


def test_a_second_candidate_for_a_finding_waits_for_the_first_to_be_withdrawn(db, admin_web, weights_on_disk):
    candidate(version="1.5")
    form = {"finding": "ich", "weights_path": "ich-next.pt", "weights_sha256": sha256_file(weights_on_disk)}

    refused = admin_web.post("/console/shadow/", form)
    admin_web.post(f"/console/shadow/{ShadowModel.objects.get().pk}/withdraw/")
    accepted = admin_web.post("/console/shadow/", form)

    assert (refused.status_code, accepted.status_code) == (400, 302)
    assert sorted(ShadowModel.objects.values_list("state", flat=True)) == ["shadow", "withdrawn"]


def test_the_shadow_pages_need_an_admin(db, rad_web, client):
    assert rad_web.get("/console/shadow/").status_code == 403
    assert rad_web.post("/console/shadow/", {"finding": "ich"}).status_code == 403
    assert client.get("/console/shadow/").status_code == 302  # to the login page
