"""Staff control over similar-items panels: pins, blocks and category rules.

Rules are rows (PanelPin, PanelBlock, CategoryRule) keyed by products and categories, never by a
model version: every version's panels obey them, the next one's too. They are applied after the
vector query (recommender.selectors.similarity): blocked products and hidden categories are left
out by the query itself, so an answer still has k products whenever k exist (the index's
iterative scan, then the exact scan); pinned products come first, in their order, and the
nearest fill the rest. Changing a rule touches the rows of the products whose panels it changes,
so their cached panels are recomputed (catalog.selectors.products_fingerprint).
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from catalog.models import CategoryRule, PanelBlock, PanelPin, Product

# A panel shows 6 products; pins beyond a panel's length would hide the model entirely.
PINS_MAX = 6


@dataclass(frozen=True)
class PanelRules:
    pinned: tuple[int, ...] = ()  # in order
    blocked: frozenset[int] = frozenset()
    hidden_categories: tuple[int, ...] = ()

    def __bool__(self):
        return bool(self.pinned or self.blocked or self.hidden_categories)

    def fingerprint(self) -> str:
        """8 hex digits naming this rule set ("" for none): recorded with the panel's views and
        clicks (recommender.services.events), so results can be told apart by the rules in force."""
        if not self:
            return ""
        text = f"{list(self.pinned)}|{sorted(self.blocked)}|{sorted(self.hidden_categories)}"
        return hashlib.sha256(text.encode()).hexdigest()[:8]


_RULES_SQL = """
    SELECT 'pin', pinned_id, position, id FROM catalog_panelpin WHERE product_id = %(p)s
    UNION ALL SELECT 'block', blocked_id, 0, 0 FROM catalog_panelblock WHERE product_id = %(p)s
    UNION ALL SELECT 'category', hidden_id, 0, 0 FROM catalog_categoryrule WHERE category_id = %(c)s"""


def panel_rules(*, product: Product) -> PanelRules:
    """The rules of ``product``'s panel, in one query."""
    with connection.cursor() as cursor:
        cursor.execute(_RULES_SQL, {"p": product.pk, "c": product.category_id})
        rows = cursor.fetchall()
    pins = sorted((position, row_id, pk) for kind, pk, position, row_id in rows if kind == "pin")  # as the admin lists them
    return PanelRules(pinned=tuple(pk for _, _, pk in pins),
                      blocked=frozenset(pk for kind, pk, _, _ in rows if kind == "block"),
                      hidden_categories=tuple(sorted(pk for kind, pk, _, _ in rows if kind == "category")))


def _touch(**lookup) -> None:
    Product.objects.filter(**lookup).update(updated_at=timezone.now())


def product_rules_set(*, product: Product, pinned: list[int], blocked: list[int]) -> PanelRules:
    """Replace ``product``'s pins (in order) and blocks. ValueError when a list names the product
    itself, an unknown product, a product twice or in both lists, or more than PINS_MAX pins."""
    pinned, blocked = [int(p) for p in pinned], [int(p) for p in blocked]
    problems = []
    if len(pinned) > PINS_MAX:
        problems.append(f"at most {PINS_MAX} pinned products (a panel's length)")
    if product.pk in pinned or product.pk in blocked:
        problems.append("a product is never in its own panel")
    if len(set(pinned)) != len(pinned) or len(set(blocked)) != len(blocked):
        problems.append("a product is named twice")
    if set(pinned) & set(blocked):
        problems.append(f"pinned and blocked at once: {sorted(set(pinned) & set(blocked))}")
    unknown = set(pinned + blocked) - set(Product.objects.filter(pk__in=pinned + blocked).values_list("pk", flat=True))
    if unknown:
        problems.append(f"no such product: {sorted(unknown)}")
    if problems:
        raise ValueError("; ".join(problems) + ".")
    with transaction.atomic():
        Product.objects.select_for_update().filter(pk=product.pk).first()  # one editor at a time
        PanelPin.objects.filter(product=product).delete()
        PanelBlock.objects.filter(product=product).delete()
        PanelPin.objects.bulk_create([PanelPin(product=product, pinned_id=pk, position=i) for i, pk in enumerate(pinned)])
        PanelBlock.objects.bulk_create([PanelBlock(product=product, blocked_id=pk) for pk in blocked])
        _touch(pk=product.pk)
    return panel_rules(product=product)


def category_rule_add(*, category, hidden) -> CategoryRule:
    """Never recommend ``hidden``'s products under ``category``'s (idempotent)."""
    if getattr(category, "pk", category) == getattr(hidden, "pk", hidden):
        raise ValueError("A category rule needs two different categories.")
    with transaction.atomic():
        rule, _ = CategoryRule.objects.get_or_create(category_id=getattr(category, "pk", category),
                                                     hidden_id=getattr(hidden, "pk", hidden))
        _touch(category_id=rule.category_id)
    return rule


def category_rule_change(*, rule: CategoryRule, category, hidden) -> CategoryRule:
    """Change a rule in place (the panels of its old and its new category change)."""
    before = rule.category_id
    rule.category_id, rule.hidden_id = getattr(category, "pk", category), getattr(hidden, "pk", hidden)
    with transaction.atomic():
        rule.save(update_fields=["category", "hidden"])
        _touch(category_id__in={before, rule.category_id})
    return rule


def category_rule_delete(*, rule: CategoryRule) -> None:
    with transaction.atomic():
        rule.delete()
        _touch(category_id=rule.category_id)
