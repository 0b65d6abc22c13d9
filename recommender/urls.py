"""Staff-only JSON endpoints for live progress in the admin (training, ingestion backlog)."""

app_name = "recommender"
urlpatterns = []
