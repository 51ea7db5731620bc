"""WADO-RS retrieval within its byte limits and its deadline, against the real Orthanc and crafted responses from the
proxy: a series or instance over a limit is refused while it is read, and the job ends rejected with the reason; a
PACS too slow to send a series within the deadline is cut off and retried later, like an outage."""

from __future__ import annotations

import time
import zlib

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.dicom_helpers import ct_series, phantom_hu, to_bytes
from tests.triage.dicom_build import SeriesSpec, StudySpec
from tests.triage.ingest_helpers import upload_study
from triage.core.exceptions import PacsError
from triage.ingest.dicomweb import InstanceTooLarge, Pacs, PacsBadResponse, SeriesTooLarge
from triage.ingest.pipeline import job_process
from triage.ingest.services import study_request_triage
from triage.models import JobState

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_settle")]

BOUNDARY = "crafted-boundary"
MULTIPART = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'}
MIB = 1 << 20


@pytest.fixture
def study(orthanc) -> StudySpec:
    """Three slices of 64 × 64 16-bit pixels: 8 KiB of pixel data each."""
    return upload_study(orthanc, StudySpec(series=[SeriesSpec(slices=3, size=64)]))


def _part(body: bytes) -> bytes:
    return f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + body


def _close() -> bytes:
    return f"\r\n--{BOUNDARY}--\r\n".encode()


def _instance() -> bytes:
    return to_bytes(ct_series(phantom_hu((1, 64, 64)))[0])


def _retrieve(source, study: StudySpec):
    return Pacs.for_source(source).retrieve_series(study.study_uid, study.series[0].series_uid)


def test_an_instance_over_the_limit_is_refused_by_its_own_code(study, pacs_source, settings):
    settings.TRIAGE_MAX_INSTANCE_BYTES = 4096

    with pytest.raises(InstanceTooLarge, match="larger than"):
        _retrieve(pacs_source, study)


def test_a_series_over_the_limit_is_refused(study, pacs_source, settings):
    settings.TRIAGE_MAX_SERIES_DOWNLOAD_BYTES = 16_000

    with pytest.raises(SeriesTooLarge) as raised:
        _retrieve(pacs_source, study)

    assert raised.value.code == "series_too_large"


def test_retrieval_within_the_limits_gives_every_instance(study, pacs_source, settings):
    settings.TRIAGE_MAX_INSTANCE_BYTES = 16_000
    settings.TRIAGE_MAX_SERIES_DOWNLOAD_BYTES = 64_000

    assert len(_retrieve(pacs_source, study)) == 3


def test_an_endless_part_is_cut_off_while_it_is_read(study, proxy, proxied_source, settings):
    settings.TRIAGE_MAX_INSTANCE_BYTES = MIB
    zeros = b"\0" * (64 * 1024)
    proxy.script.crafted_retrieval = lambda: (MULTIPART, [_part(b""), *(zeros for _ in range(1024))])  # 64 MiB

    with pytest.raises(InstanceTooLarge):
        _retrieve(proxied_source, study)

    assert proxy.script.sent_bytes < 16 * MIB


def test_many_parts_each_within_the_limit_are_cut_off_at_the_series_limit(study, proxy, proxied_source, settings):
    settings.TRIAGE_MAX_SERIES_DOWNLOAD_BYTES = 2 * MIB
    instance = _instance()
    proxy.script.crafted_retrieval = lambda: (MULTIPART, [*(_part(instance) for _ in range(5000)), _close()])

    with pytest.raises(SeriesTooLarge):
        _retrieve(proxied_source, study)

    assert proxy.script.sent_bytes < 5000 * len(instance) / 4


def test_a_deflate_bomb_is_refused_without_being_inflated(study, proxy, proxied_source, settings):
    settings.TRIAGE_MAX_INSTANCE_BYTES = MIB
    proxy.script.crafted_retrieval = lambda: (MULTIPART, [_part(_deflate_bomb(64)), _close()])

    with pytest.raises(InstanceTooLarge, match="inflates to more than"):
        _retrieve(proxied_source, study)

    assert sum(1 for path in proxy.script.seen if "/series/" in path) == 1  # refused, not retried


def test_a_body_that_ends_inside_a_part_is_retried_as_a_broken_stream(study, proxy, proxied_source, quick_retries):
    proxy.script.crafted_retrieval = lambda: (MULTIPART, [_part(_instance()[:500])])

    with pytest.raises(PacsError, match="broke off"):
        _retrieve(proxied_source, study)

    assert len(proxy.script.seen) == 3


def test_a_response_that_is_not_multipart_is_refused_and_not_retried(study, proxy, proxied_source, quick_retries):
    proxy.script.crafted_retrieval = lambda: ({"Content-Type": "text/html"}, [b"<html>login</html>"])

    with pytest.raises(PacsBadResponse):
        _retrieve(proxied_source, study)

    assert len(proxy.script.seen) == 1


def test_crafted_parts_within_the_limits_are_read(study, proxy, proxied_source):
    instance = _instance()
    proxy.script.crafted_retrieval = lambda: (
        MULTIPART,
        [_part(instance[:100]), instance[100:], _part(instance), _close()],
    )

    datasets = _retrieve(proxied_source, study)

    assert [int(ds.Rows) for ds in datasets] == [64, 64]


def test_a_job_over_a_limit_ends_rejected_with_the_reason_and_the_next_job_runs(
    orthanc, pacs_source, fake_models, settings
):
    big = upload_study(orthanc, StudySpec(accession="BIG", series=[SeriesSpec(size=64)]))
    small = upload_study(orthanc, StudySpec(accession="SMALL", series=[SeriesSpec(size=16)]))
    settings.TRIAGE_MAX_INSTANCE_BYTES = 4096
    jobs = [study_request_triage(study_instance_uid=spec.study_uid, source_name="pacs") for spec in (big, small)]

    states = [job_process(job_id=job.pk, worker_id="test-worker") for job in jobs]

    for job in jobs:
        job.refresh_from_db()
    assert states == [JobState.REJECTED, JobState.DONE]
    assert (jobs[0].error_code, jobs[1].error_code) == ("instance_too_large", "")
    assert "4096 bytes" in jobs[0].error_message


def _deflate_bomb(megabytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian CT slice whose data set inflates to ``megabytes`` of zero pixels."""
    ds = ct_series(phantom_hu((1, 8, 8)))[0]
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta_only = to_bytes(ds)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    header = _dataset_bytes_without_pixels(ds)
    pixel_header = b"\xe0\x7f\x10\x00OW\0\0" + (megabytes * MIB).to_bytes(4, "little")
    body = zeros.compress(header + pixel_header)
    chunk = b"\0" * MIB
    body += b"".join(zeros.compress(chunk) for _ in range(megabytes)) + zeros.flush()
    return meta_only[: _meta_end(meta_only)] + body


def _dataset_bytes_without_pixels(ds) -> bytes:
    """The data set before Pixel Data, encoded as Explicit VR Little Endian (what deflate compresses)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    del ds.PixelData
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _meta_end(data: bytes) -> int:
    return 132 + 12 + int.from_bytes(data[140:144], "little")


def test_a_pacs_that_sends_slowly_is_cut_off_at_the_retrieval_deadline(
    study, proxy, proxied_source, quick_retries, settings
):
    settings.TRIAGE_RETRIEVE_DEADLINE_SECONDS = 0.5
    proxy.script.trickle_bytes, proxy.script.trickle_seconds = 256, 0.05  # each read well within the 1 s timeout
    started = time.monotonic()

    with pytest.raises(PacsError, match=r"within 0.5 s") as raised:
        _retrieve(proxied_source, study)

    assert raised.value.code == "pacs_too_slow"
    assert time.monotonic() - started < 2.0  # the whole body takes about 5 s to trickle
    assert sum(1 for path in proxy.script.seen if "/series/" in path) == 1  # the deadline covers the retries too
