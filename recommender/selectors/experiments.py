"""The running A/B experiment, which arm a visitor is in, and each arm's results.

Assignment is a pure function of the experiment and the visitor's random id (SHA-256 of both, the
first 8 bytes as a number in [0, 1) against the split): the same visitor sees the same arm on
every page, process and host, without storing anything; a new experiment reshuffles. A visitor
with no id yet (its first page: the id is set by that page's beacon), or one who asked not to be
tracked, is left out: the active version answers, outside the experiment.

An experiment serves only while it is what it says: its control is the active version and its
candidate is ready or retired (recommender.services.versions ends it when either changes; the check here
keeps a row that missed that from serving a retired version).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from django.db.models import Sum

from recommender.models import Experiment, ModelVersion, PanelCount
from recommender.selectors.events import panel_rates
from recommender.stats import two_proportions


@dataclass(frozen=True)
class Arm:
    experiment: Experiment | None
    name: str  # "a" (control, the active version), "b" (the candidate) or "" (no experiment)

    @property
    def experiment_id(self) -> int | None:
        return self.experiment.pk if self.experiment else None

    @property
    def version(self) -> ModelVersion | None:
        """The version to answer with; None: the active one (the caller's default)."""
        return self.experiment.candidate if self.name == "b" else None


NO_ARM = Arm(None, "")


# A candidate is a version not serving whose files are kept: ready, or retired (e.g. the version a
# retraining replaced). recommender.services.experiments checks its files when it starts.
CANDIDATE_STATUSES = (ModelVersion.Status.READY, ModelVersion.Status.RETIRED)


def experiment_running() -> Experiment | None:
    # Not the versions' history and hyperparameters: large, and never read from here.
    return (Experiment.objects.select_related("control", "candidate")
            .defer(*(f"{v}__{f}" for v in ("control", "candidate") for f in ("history", "hyperparameters", "metrics")))
            .filter(status=Experiment.Status.RUNNING, control__status=ModelVersion.Status.ACTIVE,
                    candidate__status__in=CANDIDATE_STATUSES).first())


def experiment_candidate_ids() -> set[int]:
    """The candidate of the running experiment (a set: empty or one), which the recovery must not
    finish or prune, and whose missing embeddings it has made."""
    return set(Experiment.objects.filter(status=Experiment.Status.RUNNING).values_list("candidate_id", flat=True))


# The running experiment as this process last read it, for the shopper's path: one query a second
# at most instead of one per request (read per request, it made a cached product page 3.2x the CPU,
# 1.54 -> 4.92 ms, bench/events.py). Another process's start or end is seen within the TTL; this
# process's at once (the services call experiment_cache_clear).
RUNNING_TTL_SECONDS = 1.0
_running: tuple[float, Experiment | None] = (float("-inf"), None)


def experiment_running_cached() -> Experiment | None:
    global _running
    read_at, experiment = _running
    now = time.monotonic()
    if now - read_at > RUNNING_TTL_SECONDS:
        experiment = experiment_running()
        _running = (now, experiment)  # one assignment: threads see the old pair or the new one
    return experiment


def experiment_cache_clear() -> None:
    global _running
    _running = (float("-inf"), None)


def arm_assign(*, experiment_id: int, split: float, visitor: str) -> str:
    digest = hashlib.sha256(f"{experiment_id}:{visitor}".encode()).digest()
    return "b" if int.from_bytes(digest[:8], "big") / 2 ** 64 < split else "a"


def arm_for(*, visitor: str | None) -> Arm:
    """The arm ``visitor`` is in (see the module's docstring): no query most of the time."""
    if not visitor:
        return NO_ARM
    experiment = experiment_running_cached()
    if experiment is None:
        return NO_ARM
    return Arm(experiment, arm_assign(experiment_id=experiment.pk, split=experiment.split, visitor=visitor))


def experiment_results(*, experiment: Experiment) -> dict:
    """Both arms' views, clicks, CTR with its 95% interval, clicks per 1,000 products shown, and
    the verdict (recommender.stats.two_proportions: B against A). One query over the day counts."""
    rows = (PanelCount.objects.filter(experiment_id=experiment.pk).values("arm")
            .annotate(views=Sum("views"), clicks=Sum("clicks"), items=Sum("items")))
    found = {row["arm"]: row for row in rows}
    arms = {}
    for name in ("a", "b"):
        row = found.get(name, {"views": 0, "clicks": 0, "items": 0})
        arms[name] = panel_rates(views=row["views"], clicks=min(row["clicks"], row["views"]), items=row["items"])
    comparison = two_proportions(clicks_a=arms["a"]["clicks"], views_a=arms["a"]["views"],
                                 clicks_b=arms["b"]["clicks"], views_b=arms["b"]["views"])
    return {"a": arms["a"], "b": arms["b"], "verdict": comparison.verdict, "winner": comparison.winner,
            "p_value": comparison.p_value}
