"""factory_boy factories for the pipeline and worklist models."""

from __future__ import annotations

import factory
from django.utils import timezone

from triage import models
from worklist import models as wl_models


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.User
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    role = models.Role.RADIOLOGIST
    password = factory.django.Password("correct-horse-battery")


class SourceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.DicomWebSource
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"pacs{n}")
    url = "http://127.0.0.1:9/dicom-web"


class StudyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Study

    study_instance_uid = factory.Sequence(lambda n: f"1.2.826.0.1.3680043.10.1.{n + 1}")
    accession_number = factory.Sequence(lambda n: f"ACC{n:06d}")
    patient_id = factory.Sequence(lambda n: f"PAT{n:06d}")
    patient_name = "Synthetic^Patient"
    modalities = "CT"
    study_description = "CT HEAD WO CONTRAST"
    received_at = factory.LazyFunction(timezone.now)


class SeriesFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Series

    study = factory.SubFactory(StudyFactory)
    series_instance_uid = factory.LazyAttribute(lambda o: f"{o.study.study_instance_uid}.1")
    modality = "CT"
    description = "AXIAL 5MM"
    body_part = "HEAD"
    slice_thickness_mm = 5.0
    instance_count = 32
    routed_model = models.Finding.ICH


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.TriageJob

    study = factory.SubFactory(StudyFactory)


class ResultFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.TriageResult

    series = factory.SubFactory(SeriesFactory)
    study = factory.LazyAttribute(lambda o: o.series.study)
    finding = models.Finding.ICH
    model_name = "ich2d"
    model_version = "0.1.0"
    score = 0.9
    threshold = 0.5
    positive = factory.LazyAttribute(lambda o: o.score >= o.threshold)
    details = factory.LazyFunction(dict)


class WorklistItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = wl_models.WorklistItem

    study = factory.SubFactory(StudyFactory)
    received_at = factory.LazyAttribute(lambda o: o.study.received_at)
