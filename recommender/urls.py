"""Staff-only JSON endpoints for live progress in the admin (training, ingestion backlog), and the
panel's beacon (public)."""

from django.urls import path

from recommender import views

app_name = "recommender"
urlpatterns = [
    path("progress/training/", views.training_progress, name="training_progress"),
    path("progress/ingestion/", views.ingestion_progress, name="ingestion_progress"),
    path("seen.gif", views.panel_seen, name="panel_seen"),
]
