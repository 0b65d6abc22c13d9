"""Who is asking, what a panel's events carry, and what the events add up to per model version.

- The visitor: a random id we made (cookie VISITOR_COOKIE, set by the panel's beacon; or the API's
  ``X-Visitor-Id`` header, the storefront's own random id), never anything personal. A browser
  that sends ``DNT: 1`` or ``Sec-GPC: 1`` is not tracked: :func:`visitor_of` answers None and
  nothing is recorded for it (and it is never put in an experiment).
- Tokens: a panel's beacon and its links carry what answered (product, version, experiment, arm,
  rule set, and the products shown or the position clicked), signed with the secret key, so an
  event names only panels that were served (a replayed token still counts: see the README).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db import connection
from django.utils.crypto import constant_time_compare, salted_hmac

from recommender.stats import wilson_interval

VISITOR_COOKIE = "lk_visitor"
VISITOR_HEADER = "X-Visitor-Id"
VISITOR_COOKIE_AGE = 365 * 24 * 3600
_VISITOR = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SALT = "lookalike.panel-events"
TOKEN_MAX_SHOWN = 24  # a view token lists at most this many products (the page's panel has 6)


def tracking_refused(request) -> bool:
    return request.headers.get("DNT") == "1" or request.headers.get("Sec-GPC") == "1"


def visitor_of(request, *, api: bool = False) -> str | None:
    """The visitor's random id; "" when it has none yet; None when it asked not to be tracked, or
    is signed-in staff (their browsing is not shoppers')."""
    user = getattr(request, "user", None)
    if tracking_refused(request) or (user is not None and user.is_authenticated and user.is_staff):
        return None
    value = request.headers.get(VISITOR_HEADER, "") if api else request.COOKIES.get(VISITOR_COOKIE, "")
    return value if _VISITOR.fullmatch(value or "") else ""


def _sign(payload: str) -> str:
    return salted_hmac(_SALT, payload, algorithm="sha256").hexdigest()[:16]


@dataclass(frozen=True)
class PanelOrigin:
    """What answered a panel: the product, the version (None: cold start), the experiment and arm,
    the rule set's fingerprint."""

    product_id: int
    version_id: int | None
    experiment_id: int | None = None
    arm: str = ""
    rules: str = ""

    def _parts(self) -> str:
        return f"{self.product_id}.{self.version_id or 0}.{self.experiment_id or 0}.{self.arm or '-'}.{self.rules or '-'}"


def view_token(origin: PanelOrigin, shown) -> str:
    payload = f"{origin._parts()}.{'-'.join(str(int(p)) for p in list(shown)[:TOKEN_MAX_SHOWN]) or '-'}"
    return f"{payload}~{_sign(payload)}"


def click_token(origin: PanelOrigin, *, target_id: int, position: int) -> str:
    """The link parameter of the product at ``position`` (from 1): signed with its target, so it
    counts only on that product's page."""
    payload = f"{origin._parts()}.{int(position)}"
    return f"{payload}~{_sign(f'{payload}>{int(target_id)}')}"


def _origin(fields: list[str]) -> PanelOrigin:
    product, version, experiment = (int(f) for f in fields[:3])
    arm, rules = ("" if f == "-" else f for f in fields[3:5])
    if arm not in ("", "a", "b") or not re.fullmatch(r"[0-9a-f]{0,16}", rules):
        raise ValueError("bad token")
    return PanelOrigin(product, version or None, experiment or None, arm, rules)


def view_token_read(token: str) -> tuple[PanelOrigin, list[int]] | None:
    """The origin and products of a view token, or None when it is malformed or not ours."""
    payload, _, signature = (token or "")[:600].partition("~")
    fields = payload.split(".")
    if len(fields) != 6 or not constant_time_compare(signature, _sign(payload)):
        return None
    try:
        shown = [] if fields[5] == "-" else [int(p) for p in fields[5].split("-")][:TOKEN_MAX_SHOWN]
        return _origin(fields), shown
    except ValueError:
        return None


def click_token_read(token: str, *, target_id: int) -> tuple[PanelOrigin, int] | None:
    """The origin and position of a click token on ``target_id``'s page, or None."""
    payload, _, signature = (token or "")[:200].partition("~")
    fields = payload.split(".")
    if len(fields) != 6 or not constant_time_compare(signature, _sign(f"{payload}>{int(target_id)}")):
        return None
    try:
        return _origin(fields), int(fields[5])
    except ValueError:
        return None


# --------------------------------------------------------------------------- per version
# From the counts written with the events (recommender.models.PanelCount, PanelShown), never the
# events themselves: a few rows per version and day.
_VERSION_COUNTS_SQL = """
    SELECT version_id, sum(views), sum(clicks), sum(items) FROM recommender_panelcount
    WHERE version_id = ANY(%s) GROUP BY version_id"""
_SHOWN_COVERAGE_SQL = """
    SELECT s.version_id, count(*) FROM recommender_panelshown s JOIN catalog_product p ON p.id = s.product_id
    WHERE p.is_active AND s.version_id = ANY(%s) GROUP BY s.version_id"""
_LIST_COVERAGE_SQL = """
    SELECT l.version_id, count(DISTINCT n.id) FROM recommender_neighbours l, unnest(l.neighbour_ids[1:6]) n(id)
    WHERE l.version_id = ANY(%s) GROUP BY l.version_id"""
_ACTIVE_PRODUCTS_SQL = "SELECT count(*) FROM catalog_product WHERE is_active"


def panel_rates(*, views: int, clicks: int, items: int) -> dict:
    """Click-through rate of the panel (share of views with a click, 95% Wilson interval) and
    clicks per 1,000 products shown."""
    low, high = wilson_interval(clicks, views)
    return {"views": views, "clicks": clicks, "ctr": clicks / views if views else None, "ctr_low": low,
            "ctr_high": high, "per_1000": 1000 * clicks / items if items else None}


def version_panel_stats(*, version_ids) -> dict[int, dict]:
    """Per version: views, clicks, CTR with its interval, clicks per 1,000 products shown, and
    coverage: the share of active products shown in some panel (from the events) and in some
    product's top 6 (from the version's neighbour lists, None without lists). Four queries over
    the counts, the shown products and the lists, none over the events."""
    ids = [int(v) for v in version_ids]
    with connection.cursor() as cursor:
        cursor.execute(_VERSION_COUNTS_SQL, [ids])
        counts = {v: (int(views), int(clicks), int(items)) for v, views, clicks, items in cursor.fetchall()}
        cursor.execute(_SHOWN_COVERAGE_SQL, [ids])
        shown = dict(cursor.fetchall())
        cursor.execute(_LIST_COVERAGE_SQL, [ids])
        listed = dict(cursor.fetchall())
        cursor.execute(_ACTIVE_PRODUCTS_SQL)
        products = cursor.fetchone()[0] or 1
    out = {}
    for v in ids:
        views, clicks, items = counts.get(v, (0, 0, 0))
        out[v] = {**panel_rates(views=views, clicks=min(clicks, views) if views else clicks, items=items),
                  "coverage_shown": shown.get(v, 0) / products,
                  "coverage_lists": listed[v] / products if v in listed else None}
    return out
