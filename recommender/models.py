from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now
from pgvector.django import HnswIndex, VectorField

# Not imported from recommender.head/backbone: that would pull scikit-learn into every Django
# start-up. tests/recommender/test_models.py checks they agree.
FEATURE_DIM = 2048
EMBEDDING_DIM = 512


class BackboneFeature(models.Model):
    """ResNet50 features of one image under one backbone identity: retraining never re-runs the CNN."""

    image = models.ForeignKey("catalog.ProductImage", on_delete=models.CASCADE, related_name="features")
    backbone = models.CharField(max_length=120, help_text="architecture:weights:input size")
    vector = VectorField(dimensions=FEATURE_DIM)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "backbone"], name="one_feature_per_backbone")]
        indexes = [models.Index(fields=["backbone"])]


class FeatureScale(models.Model):
    """The cold start's scaler of one backbone (similar items before any version is trained): the
    inverse standard deviation of each feature over the features of active products, fitted in
    PostgreSQL by recommender.services.features and read there by selectors.features (a weighted
    L2: the mean cancels out of a distance between two standardised vectors, so none is kept)."""

    backbone = models.CharField(max_length=120, primary_key=True, help_text="architecture:weights:input size")
    features = models.PositiveIntegerField(help_text=(
        "Features of the backbone (every image) when fitted: it is refitted once the count has moved "
        "by more than services.features.SCALE_REFIT_SHARE."))
    rows = models.PositiveIntegerField(help_text="Features of active products it was fitted on.")
    inverse_std = VectorField(dimensions=FEATURE_DIM)
    fitted_at = models.DateTimeField()

    def __str__(self):
        return f"scaler of {self.backbone} ({self.rows} rows)"


class ModelVersion(models.Model):
    class Phase(models.TextChoices):
        """Where a training is (``progress["phase"]``): written by services.training, read by the
        progress bars (selectors.versions) and the API. Labels are what staff read."""

        QUEUED = "queued", "Waiting for a worker"
        LOADING = "loading features", "Loading image features"
        TRAINING = "training", "Training"
        SAVING = "saving", "Saving the model"
        EXTRACTING = "extracting", "Re-extracting the catalog's features with the trained backbone"
        EMBEDDING = "embedding", "Embedding the catalog"
        NEIGHBOURS = "neighbours", "Precomputing each product's similar items"
        EVALUATING = "evaluating", "Evaluating"
        ACTIVATING = "activating", "Activating"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    class Status(models.TextChoices):
        TRAINING = "training", "Training"
        READY = "ready", "Ready"
        ACTIVE = "active", "Active"
        FAILED = "failed", "Failed"
        RETIRED = "retired", "Retired"

    class Kind(models.TextChoices):
        HEAD = "head", "Head only (frozen backbone)"
        BACKBONE = "backbone", "Backbone and head (trained end to end)"

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.TRAINING, db_index=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.HEAD)
    kind_reason = models.CharField(max_length=300, blank=True, help_text="Why this kind of training was chosen.")
    backbone = models.CharField(max_length=120, help_text=(
        "Identity of the backbone whose features this version reads; for the backbone kind, its own "
        "trained backbone (set once saved)."))
    weights = models.CharField(max_length=255, help_text=(
        "Backbone weights the version started from: 'imagenet', 'random', a file, or a version's trained "
        "backbone ('models:v<N>/backbone.weights.h5')."))
    input_size = models.PositiveIntegerField()
    classes = models.JSONField(default=list, blank=True)
    hyperparameters = models.JSONField(default=dict, blank=True)
    artifacts = models.CharField(max_length=500, blank=True, help_text=(
        "Where its files are: 'v<N>' in the models storage (recommender.artifacts), or the folder of a "
        "version saved before that storage existed."))
    checksums = models.JSONField(default=dict, blank=True, help_text=(
        "SHA-256 of each of its files, recorded once they are stored and verified before any of them is "
        "loaded (the joblib files are pickles: a changed file must never be unpickled)."))
    trigger = models.CharField(max_length=200, blank=True, help_text="Why this version was trained.")
    n_train = models.PositiveIntegerField(default=0)
    n_val = models.PositiveIntegerField(default=0)
    n_images = models.PositiveIntegerField(default=0, help_text="Images with features when training began.")
    history = models.JSONField(default=dict, blank=True)
    val_accuracy = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    progress = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Times a worker started this training (a second start means the first was lost).")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        # Beyond add/change/delete/view: starting a training, and changing which version serves,
        # are granted separately (the API and the admin check them for every staff user).
        permissions = [
            ("train_modelversion", "Can start a training"),
            ("activate_modelversion", "Can activate or retire a model version"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=Q(status="active"), name="one_active_version"),
            models.UniqueConstraint(fields=["status"], condition=Q(status="training"), name="one_training_at_a_time"),
        ]

    def __str__(self):
        return f"v{self.pk} ({self.status})"

    @property
    def uses_random_weights(self):
        return self.weights == "random"

    @property
    def trains_backbone(self):
        return self.kind == self.Kind.BACKBONE


class Embedding(models.Model):
    """The 512-d embedding of one image under one model version; only the active version is served."""

    image = models.ForeignKey("catalog.ProductImage", on_delete=models.CASCADE, related_name="embeddings")
    # Denormalised so that "one entry per product" and product filters need no extra join.
    product = models.ForeignKey("catalog.Product", on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="embeddings")
    vector = VectorField(dimensions=EMBEDDING_DIM)
    predicted = models.CharField(max_length=120, help_text="Category predicted by this version.")
    confidence = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["image", "version"], name="one_embedding_per_version")]
        indexes = [
            # pgvector's defaults. Measured on 100,000 synthetic 512-d vectors (bench/query_speed.py,
            # 2 cores, parallel build): recall@6 at ef_search 100 varies from build to build, 0.85 to
            # 0.98 over 16 builds; m=16/ef_construction=128 gave 0.956-0.988 (3 builds, 1.5x build
            # time) and m=24/ef_construction=64-128 0.954-0.994 (4 builds, 1.5-2.2x build time and a
            # larger index). The ranges overlap, so the defaults stay; ef_search (a setting) is the
            # knob, and every version records its own index recall. The product panel is answered
            # by precomputed lists (recommender/services/neighbours.py, exact); this index serves
            # search by photo and the filters the lists cannot. Measured side by side at 100,000
            # (one build each, 2 noisy cores): a halfvec expression index (m=16, ef_construction=64)
            # with re-ranking on the full vector: p50 4.96 ms at recall@6 0.981 (ef_search 100) vs
            # 7.40 ms at 0.977 here, half the size (130 vs 260 MiB): the next step for this index.
            HnswIndex(name="embedding_vector_hnsw", fields=["vector"], m=16, ef_construction=64,
                      opclasses=["vector_l2_ops"]),
            models.Index(fields=["version", "product"]),
            # The embeddings of a version stored after its neighbour lists (the read path's delta scan).
            models.Index(fields=["version", "id"], name="embedding_version_id_idx"),
        ]


# The read path scans at most this many embeddings stored after a version's lists (exactly, ~3 us
# each at 100,000 rows); more, and the index answers until the lists are folded
# (recommender.services.neighbours folds them in well before: FOLD_SHARE).
NEIGHBOURS_DELTA_MAX = 2000


class NeighbourList(models.Model):
    """The precomputed nearest other products of one product under one version (its product panel,
    exact): written only by recommender.services.neighbours, read by selectors.similarity."""

    # No index of its own on version: the unique constraint's index leads with it.
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+", db_index=False)
    product = models.ForeignKey("catalog.Product", on_delete=models.CASCADE, related_name="+")
    # The product's query image (its first, as similar_products picks it) the list was computed
    # from; not a foreign key: the read path checks the vector itself, so a stale id is harmless.
    image_id = models.BigIntegerField()
    # Nearest first, each product at its nearest image; neighbours deleted since are skipped at read.
    neighbour_ids = ArrayField(models.BigIntegerField())
    distances = ArrayField(models.FloatField())

    class Meta:
        db_table = "recommender_neighbours"
        constraints = [models.UniqueConstraint(fields=["version", "product"], name="one_neighbour_list_per_product")]


class NeighbourListState(models.Model):
    """Per version with lists: every embedding with id <= ``upto`` is accounted for in them; newer ones
    (ingested since) are scanned exactly at read time and folded in later."""

    version = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, primary_key=True, related_name="+")
    upto = models.BigIntegerField()
    rows = models.BigIntegerField(help_text="Embeddings of the version when the lists were last built.")
    built_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "recommender_neighbours_state"


class Experiment(models.Model):
    """An A/B test of the panel: the active version (arm A) against a ready candidate (arm B).

    Shoppers are assigned by a hash of their visitor id (recommender.selectors.experiments); one
    experiment runs at a time (a partial unique index). It ends when staff promote or drop the
    candidate, or when either version stops being served (retired, or another one activated):
    ``outcome`` says which, and the events keep their arm for the verdict."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        ENDED = "ended", "Ended"

    class Outcome(models.TextChoices):
        PROMOTED = "promoted", "Candidate promoted"
        DROPPED = "dropped", "Candidate dropped"
        RETIRED = "retired", "A version was retired"
        SUPERSEDED = "superseded", "Another version was activated"

    control = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    candidate = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    split = models.FloatField(help_text="Share of visitors shown the candidate (arm B), 0.05 to 0.95.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    outcome = models.CharField(max_length=12, choices=Outcome.choices, blank=True)
    started_by = models.CharField(max_length=150, blank=True)
    started_at = models.DateTimeField(db_default=Now())
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        permissions = [("run_experiment", "Can start and end an A/B experiment")]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=Q(status="running"), name="one_running_experiment"),
            models.CheckConstraint(condition=Q(split__gte=0.05, split__lte=0.95), name="experiment_split_range"),
            models.CheckConstraint(condition=~Q(control=models.F("candidate")), name="experiment_two_versions"),
        ]

    def __str__(self):
        return f"experiment {self.pk}: v{self.control_id} vs v{self.candidate_id}"


class PanelEvent(models.Model):
    """One panel shown (``view``) or one of its products clicked (``click``).

    Written in batches from a Redis buffer (recommender.services.events); a batch written twice
    after a lost acknowledgement is inserted once (its digest is claimed in PanelFlush by the same
    statement). No foreign keys: events outlive products, and writing them never waits on a
    catalog row's lock."""

    class Kind(models.IntegerChoices):
        VIEW = 1, "view"
        CLICK = 2, "click"

    at = models.DateTimeField(db_index=True)  # the prune deletes by it
    kind = models.SmallIntegerField(choices=Kind.choices)
    channel = models.CharField(max_length=4)  # "page" or "api"
    visitor = models.CharField(max_length=32, blank=True)  # random, made by us; "" before it is set
    product_id = models.IntegerField()  # the product whose panel it is
    version_id = models.IntegerField(null=True)  # None: the cold start answered
    experiment_id = models.IntegerField(null=True)
    arm = models.CharField(max_length=1, blank=True)  # "a", "b", or "" outside an experiment
    rules = models.CharField(max_length=16, blank=True)  # fingerprint of the staff rules applied
    shown = ArrayField(models.IntegerField(), default=list, blank=True)  # views: the products, in order
    target_id = models.IntegerField(null=True)  # clicks: the product clicked
    position = models.SmallIntegerField(null=True)  # clicks: its place in the panel, from 1

    class Meta:
        indexes = [models.Index(fields=["version_id", "kind"], name="panel_event_version"),
                   models.Index(fields=["experiment_id", "arm", "kind"], name="panel_event_experiment")]


class PanelCount(models.Model):
    """Views, clicks and products shown per day, version, experiment and arm: what the dashboard and
    an experiment's verdict read (a few rows, instead of scanning the events). Added to in the same
    statement that inserts the events (recommender.services.events), so an event counts once."""

    day = models.DateField()
    version_id = models.IntegerField(null=True)
    experiment_id = models.IntegerField(null=True)
    arm = models.CharField(max_length=1, blank=True)
    views = models.BigIntegerField(default=0)
    clicks = models.BigIntegerField(default=0)
    items = models.BigIntegerField(default=0)  # products shown, over the views

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "version_id", "experiment_id", "arm"],
                                               nulls_distinct=False, name="one_panel_count_per_day")]


class PanelShown(models.Model):
    """A product shown in some panel under a version (None: the cold start): the coverage."""

    version_id = models.IntegerField(null=True)
    product_id = models.IntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version_id", "product_id"], nulls_distinct=False,
                                               name="one_panel_shown_per_product")]


class PanelFlush(models.Model):
    """A chunk of buffered events already written (the SHA-256 of its lines): claimed in the
    statement that writes it, so the chunk read again after a flush died is not written twice."""

    chunk = models.CharField(max_length=64, primary_key=True)
    at = models.DateTimeField(db_default=Now(), db_index=True)
