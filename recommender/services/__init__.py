"""Writes of the recommender, one module per job (HackSoft style: plain functions, keyword-only
arguments, ``<entity>_<action>`` names). Import from the module that does the job:

- ``ingestion``: a new image gets its features, thumbnails and embedding (enqueue, claim, process, retry)
- ``training``: start, train (named phases) and fail a model version
- ``backbone_training``: the backbone kind's phases (pixels, training, saving, re-extraction)
- ``features``: backbone features re-extracted under a version's backbone, and pruned
- ``phases``: a training's progress and phase times, shared by both kinds
- ``versions``: the quality gate, activation and retirement
- ``embeddings``: create, backfill and prune a version's embeddings
- ``evaluation``: held-out metrics and the index's recall, stored on the version
- ``maintenance``: the periodic recovery and retraining trigger

The status columns are the truth about background work (Saleor style): ``ProductImage.status``
for ingestion and ``ModelVersion.status``/``progress`` for training. Every function is safe to
run twice with the same arguments: a second delivery of a task changes nothing. Services publish
work through :mod:`recommender.publishing` after commit and never import :mod:`recommender.tasks`.
"""
