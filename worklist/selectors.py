"""Reads for the worklist: the reading order as a database ordering, item payload queries, study detail."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import (
    BooleanField,
    Case,
    Exists,
    ExpressionWrapper,
    IntegerField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    When,
)
from django.utils import timezone

from triage.core.exceptions import InvalidInput, NotFound
from triage.models import Study, TriageResult, User
from worklist.models import Feedback, ItemStatus, WorklistEventCounter, WorklistItem

OPEN_STATUSES = (ItemStatus.WAITING, ItemStatus.IN_PROGRESS)
STATUS_FILTERS = {
    "open": OPEN_STATUSES,
    "waiting": (ItemStatus.WAITING,),
    "in_progress": (ItemStatus.IN_PROGRESS,),
    "reported": (ItemStatus.REPORTED,),
    "all": tuple(ItemStatus.values),
}
READING_ORDER = ("-starving", "-sort_key", "received_at", "id")
# Far beyond any worklist, far below PostgreSQL's bigint: a larger offset is refused rather than sent to the database.
MAX_OFFSET = 10_000_000


def max_wait() -> timedelta:
    return timedelta(minutes=settings.TRIAGE_MAX_WAIT_MINUTES)


def starving_expression(*, now: datetime) -> Case:
    """The anti-starvation tier, computed in the query because it depends on the clock."""
    cutoff = now - max_wait()
    return Case(When(status=ItemStatus.WAITING, received_at__lt=cutoff, then=1), default=0, output_field=IntegerField())


def current_results_prefetch(prefix: str = "study__") -> Prefetch:
    """Current results without the PNG bytes; ``has_key_image`` says whether there is one."""
    results = (
        TriageResult.objects.filter(is_current=True)
        .defer("key_image_png", "details")
        .annotate(
            has_key_image=ExpressionWrapper(Q(key_image_png__isnull=False), output_field=BooleanField()),
        )
        .order_by("finding", "id")
    )
    return Prefetch(f"{prefix}results", queryset=results, to_attr="current_results")


def worklist_items(
    *,
    user: User,
    status: str = "open",
    modality: str | None = None,
    finding: str | None = None,
    claimed_by_me: bool = False,
    department: str | None = None,
    institution: str | None = None,
    now: datetime | None = None,
) -> QuerySet[WorklistItem]:
    """Items in reading order, with everything their payload needs. ``now`` fixes the starving tier."""
    if status not in STATUS_FILTERS:
        raise InvalidInput(f"Unknown status filter {status!r}; use one of {', '.join(STATUS_FILTERS)}.")
    items = (
        WorklistItem.objects.filter(status__in=STATUS_FILTERS[status])
        .select_related("study", "claimed_by", "acknowledged_by")
        .prefetch_related(current_results_prefetch())
        .annotate(starving=starving_expression(now=now or timezone.now()))
    )
    if modality:
        items = items.filter(study__modalities__icontains=modality)
    if finding:
        positive = TriageResult.objects.filter(
            study_id=OuterRef("study_id"), finding=finding, is_current=True, positive=True
        )
        items = items.filter(Exists(positive))
    if claimed_by_me:
        items = items.filter(claimed_by=user)
    if department:
        items = items.filter(study__department__iexact=department)
    if institution:
        items = items.filter(study__institution__iexact=institution)
    return items.order_by(*READING_ORDER)


# Counting every open item costs a scan of all of them (about 11 ms at 100,000); a worklist is read from the top, so
# the total is exact up to here and reported as "at least" beyond.
COUNT_EXACT_UP_TO = 10_000


@dataclass(frozen=True)
class Page:
    items: list[WorklistItem]
    count: int  # exact when ``count_exact``; otherwise a lower bound (COUNT_EXACT_UP_TO)
    count_exact: bool
    has_more: bool


def worklist_count(items: QuerySet[WorklistItem]) -> tuple[int, bool]:
    """(count, exact): the number of items, counted no further than ``COUNT_EXACT_UP_TO``."""
    n = items.order_by().values("pk")[: COUNT_EXACT_UP_TO + 1].count()
    return min(n, COUNT_EXACT_UP_TO), n <= COUNT_EXACT_UP_TO


def worklist_page(*, items: QuerySet[WorklistItem], offset: int, limit: int, now: datetime) -> Page:
    """One page of ``worklist_items(...)``, fetched tier by tier, with whether more follow and the (bounded) total.

    Ordering by the computed tier first would make PostgreSQL sort every open item; each tier alone is ordered
    like the partial index ``worklist_open_reading_order``, so both queries stop after one page of index rows.
    One row more than the page is fetched to know whether another page follows.
    """
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET:,}.")
    starving = Q(status=ItemStatus.WAITING, received_at__lt=now - max_wait())
    in_tier = items.order_by(*READING_ORDER[1:])
    end = offset + limit + 1
    rows = list(in_tier.filter(starving)[offset:end])
    if len(rows) < end - offset:
        # The page reaches past the starving tier: its size is known from the page unless the page starts beyond it.
        starving_count = offset + len(rows) if rows or offset == 0 else in_tier.filter(starving).count()
        rows += list(in_tier.exclude(starving)[max(0, offset - starving_count) : end - starving_count])
    count, exact = worklist_count(items)
    return Page(items=rows[:limit], count=count, count_exact=exact, has_more=len(rows) > limit)


def worklist_item_for_payload(*, item_id: int, now: datetime | None = None) -> WorklistItem:
    item = (
        WorklistItem.objects.select_related("study", "claimed_by", "acknowledged_by")
        .prefetch_related(current_results_prefetch())
        .annotate(starving=starving_expression(now=now or timezone.now()))
        .get(pk=item_id)
    )
    item.rank = worklist_item_rank(item=item, now=now)
    return item


def worklist_item_rank(*, item: WorklistItem, now: datetime | None = None) -> int | None:
    """Position of an open item in the full reading order (1 is read first); None once reported."""
    if item.status not in OPEN_STATUSES:
        return None
    starving = getattr(item, "starving", None)
    if starving is None:
        starving = int(item.status == ItemStatus.WAITING and item.received_at < (now or timezone.now()) - max_wait())
    same_key = Q(starving=starving, sort_key=item.sort_key)
    ahead = (
        Q(starving__gt=starving)
        | Q(starving=starving, sort_key__gt=item.sort_key)
        | (same_key & Q(received_at__lt=item.received_at))
        | (same_key & Q(received_at=item.received_at, id__lt=item.pk))
    )
    open_items = WorklistItem.objects.filter(status__in=OPEN_STATUSES)
    return open_items.annotate(starving=starving_expression(now=now or timezone.now())).filter(ahead).count() + 1


def worklist_seq() -> int:
    counter = WorklistEventCounter.objects.filter(pk=1).values_list("value", flat=True).first()
    return counter or 0


def study_detail_get(*, study_instance_uid: str) -> Study:
    results = (
        TriageResult.objects.filter(is_current=True)
        .defer("key_image_png")
        .annotate(has_key_image=ExpressionWrapper(Q(key_image_png__isnull=False), output_field=BooleanField()))
    )
    study = (
        Study.objects.select_related("worklist_item", "worklist_item__claimed_by", "worklist_item__acknowledged_by")  # type: ignore[no-redef]
        .prefetch_related(
            "series", Prefetch("results", queryset=results.order_by("finding"), to_attr="current_results")
        )
        .filter(study_instance_uid=study_instance_uid)
        .first()
    )
    if study is None:
        raise NotFound("No such study.")
    return study


def feedback_by_user(*, user: User, result_ids: list[int]) -> dict[int, str]:
    rows = Feedback.objects.filter(user=user, result_id__in=result_ids).values_list("result_id", "verdict")
    return dict(rows)


def result_key_image(*, result_id: int) -> bytes:
    png = TriageResult.objects.filter(pk=result_id).values_list("key_image_png", flat=True).first()
    if not png:
        raise NotFound("This result has no key image.")
    return bytes(png)
