"""The REST API (Django REST framework), mounted at /api/."""
