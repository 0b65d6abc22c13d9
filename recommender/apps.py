from django.apps import AppConfig


class RecommenderConfig(AppConfig):
    name = "recommender"
    verbose_name = "Recommender"

    def ready(self):
        from recommender import conf, signals  # noqa: F401  (the config check; enqueue work after commit)
