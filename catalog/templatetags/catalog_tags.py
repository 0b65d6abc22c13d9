from django import template

register = template.Library()


@register.filter
def thumb(image, size=256):
    """URL of an image's pre-made thumbnail closest to ``size``."""
    return image.thumbnail_url(int(size)) if image else ""
