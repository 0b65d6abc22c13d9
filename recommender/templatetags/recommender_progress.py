"""``{% ingestion_progress_panel %}``: the live image-processing bar, for any staff page.

Other apps' pages (the catalog's product list and bulk upload) include the bar through this tag,
so they need no Python import of the recommender to show it."""

from django import template

from recommender import presentation
from recommender.selectors.ingestion import ingestion_status

register = template.Library()


@register.inclusion_tag("admin/includes/lk_ingestion_progress.html")
def ingestion_progress_panel():
    status = ingestion_status()
    return {"ingestion": status, "ingestion_display": presentation.ingestion_display(status)}
