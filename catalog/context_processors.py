def navigation(request):
    """Site name for every template; categories come from the views that show them."""
    return {"site_name": "Lookalike"}
