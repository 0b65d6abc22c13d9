"""Benchmark: MMR re-ranking of the similar-items panel on variant-heavy catalogs (issue 17).

bench/quality.py --diversity-only measures RECOMMENDER["DIVERSITY_LAMBDA"] on Fashion-MNIST, which
has no near-identical variants; the re-ranking exists for "six near-identical variants of one
product make a poor panel". This measures it where that happens.

Catalogs, one per source of bench/catalogs.py (colour product photos, recoloured textures, line
drawings: unlike each other), each a shop of its own (its own head):

- families: a base item of the generator plus V-1 near-identical variants of it, V in (1, 3, 6),
  a third of the families each (so 60% of the products belong to a family of six). A variant is
  the base image with a small colour shift (hue turned 2-6% of the circle, grey pictures left
  grey; brightness x0.95-1.05), 1-3% taken off its width and height on random sides and scaled
  back (a small shift and zoom), re-encoded (JPEG quality 75-95; PNG stays PNG), each from its own
  seeded generator. Every product of a family has the family's category;
- held-out queries: other items of the same generator (another seed), none of them in the catalog
  (as a photo search or a new product is).

Embeddings as the product makes them without ImageNet weights: the backbone (ResNet50, seeded
random weights unless RECOMMENDER_BACKBONE_WEIGHTS says otherwise) extracts each decoded image's
features; a head (recommender.head, the product's 32 epochs and 20% validation split) is trained
on the catalog's categories; products and queries are its standardised 512-d mid-layer embeddings.

Each query's 24 nearest products (recommender.selectors.diversity.POOL_MIN) are re-ranked by MMR
(recommender.diversity.mmr_order_from_distances) at each trade-off, and by the variant cap (CAPS:
nearest first, at most N of a variant group, groups inferred from the pool's distances by
recommender.diversity.variant_groups; the product's setting DIVERSITY_VARIANTS_MAX), and of the 6 kept:

- P@6: share with the query's category (what re-ranking costs);
- distinct families among the 6 (the variant-crowding measure: higher is better, 6 at most), and
  those of the query's category (distinct relevant products: a sibling of one already shown adds
  to P@6 but not here);
- crowded panels: share of panels with 3 or more products of one family;
- intra-list distance: mean pairwise distance of the 6 in the embedding and in raw pixels (32x32
  RGB standardised on the catalog: a space MMR does not optimise).

P@6's change comes with its standard error (paired over queries). The catalog table also gives the
share of sibling pairs that catalog.duplicates' default threshold would flag as near-duplicates
(hidden from each other's panels while the pair is open): the panels here keep every variant, as
the shop's do once staff judge them distinct products.

Also, as a second view, product pages: each catalog product's own panel (its 24 nearest other
products), where its siblings are the nearest by construction: the case the setting is for.

    python bench/diversity.py [--quick | --full] [--sources colour_objects,...] [--no-write]

--quick (the default): 180 families (600 products) and 300 queries per catalog, input size 32, about
1.5 minutes on 2 cores; --full: 900 families (3,000 products) and 1,000 queries at
$RECOMMENDER_INPUT_SIZE or 224. Prints a table per catalog and overall and writes
bench/results/diversity.json (--no-write: print only).
"""

from __future__ import annotations

import io
import os
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image, ImageEnhance  # noqa: E402

from bench import catalogs, common  # noqa: E402
from catalog import perceptual  # noqa: E402  (pure PIL + numpy)
from recommender.diversity import (  # noqa: E402
    intra_list_distance, mmr_order_from_distances, pairwise_distances, rerank_metrics, variant_groups)
from recommender.evaluation import nearest  # noqa: E402

SOURCES = ("colour_objects", "recoloured_crops", "line_drawings")
SIZES = {"quick": (180, 300), "full": (900, 1000)}  # families per catalog, held-out queries per catalog
FAMILY_SIZES = (1, 3, 6)  # products per family: a base item and V-1 variants
TRADE_OFFS = (1.0, 0.9, 0.8, 0.7, 0.5)  # RECOMMENDER["DIVERSITY_LAMBDA"]; 1.0 = nearest first (the default)
# The variant cap (RECOMMENDER["DIVERSITY_VARIANTS_MAX"], ["DIVERSITY_VARIANT_CLOSENESS"]): (trade-off,
# at most this many of a variant group, closeness as a share of the pool's median distance to the query).
CAPS = ((1.0, 2, 0.5), (1.0, 2, 0.6), (1.0, 2, 0.7), (1.0, 1, 0.6), (0.9, 2, 0.6))
SETTINGS = tuple((t, 0, 0.0) for t in TRADE_OFFS) + CAPS
K, POOL = 6, 24  # the panel, and the pool it is re-ranked from (recommender.selectors.diversity.POOL_MIN)
CROWDED = 3  # a panel with this many products of one family is crowded
PIXELS = 32  # side of the raw-pixel space
SEED = 2041  # the catalogs' seed; held-out queries use SEED + 1
DUPLICATE_MAX_BITS = 56  # catalog.duplicates.MAX_BITS: the detector's default threshold (Hamming bits)


# --------------------------------------------------------------------------- catalogs


def encode_like(picture: Image.Image, original: bytes, rng) -> bytes:
    """``picture`` encoded in the format of ``original``: JPEG at quality 75-95, or PNG."""
    buffer = io.BytesIO()
    if catalogs.extension(original) == "png":
        picture.save(buffer, "PNG")
    else:
        picture.convert("RGB").save(buffer, "JPEG", quality=int(rng.integers(75, 96)))
    return buffer.getvalue()


def variant(picture: Image.Image, original: bytes, rng) -> bytes:
    """A near-identical variant of ``picture`` (whose file is ``original``): colour shifted a few
    per cent, 1-3% cropped on random sides and scaled back, re-encoded."""
    grey = picture.mode == "L"
    out = picture.convert("L" if grey else "RGB")
    if not grey:
        hsv = np.asarray(out.convert("HSV")).astype(np.int32)
        turn = int(round(rng.choice((-1, 1)) * rng.uniform(0.02, 0.06) * 256))
        hsv[..., 0] = (hsv[..., 0] + turn) % 256
        out = Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.95, 1.05)))
    w, h = out.size
    cut_x, cut_y = rng.uniform(0.01, 0.03, size=2)
    share_x, share_y = rng.uniform(0, 1, size=2)  # how much of the cut comes off the left / top
    box = (w * cut_x * share_x, h * cut_y * share_y, w - w * cut_x * (1 - share_x), h - h * cut_y * (1 - share_y))
    out = out.resize((w, h), Image.Resampling.BICUBIC, box=box)
    return encode_like(out, original, rng)


def family_catalog(source: str, n_families: int, seed: int = SEED) -> dict:
    """A catalog of ``n_families`` families of ``source`` (a key of bench.catalogs.CATALOGS):
    files, labels (the family's category), family (its number) and family_size per product."""
    files, labels = catalogs.generate(source, n_families, seed)
    tag = zlib.crc32(source.encode())
    sizes = np.resize(np.asarray(FAMILY_SIZES), n_families)
    np.random.default_rng([seed, tag]).shuffle(sizes)
    out = {"files": [], "labels": [], "family": [], "family_size": []}
    for f, (data, label, size) in enumerate(zip(files, labels, sizes)):
        base = catalogs.decode(data)
        members = [data] + [variant(base, data, np.random.default_rng([seed, tag, f, j])) for j in range(1, size)]
        out["files"] += members
        out["labels"] += [label] * size
        out["family"] += [f] * size
        out["family_size"] += [int(size)] * size
    return {key: np.asarray(value) if key != "files" else value for key, value in out.items()}


def held_out(source: str, n: int, seed: int = SEED + 1) -> dict:
    """``n`` other items of the same generator and categories (another seed): not in the catalog."""
    files, labels = catalogs.generate(source, n, seed)
    return {"files": files, "labels": np.asarray(labels)}


def pixel_vectors(files: list[bytes]) -> np.ndarray:
    """32x32 RGB pixels of each file, flattened (float32)."""
    pictures = (catalogs.decode(f).convert("RGB").resize((PIXELS, PIXELS), Image.Resampling.BILINEAR) for f in files)
    return np.stack([np.asarray(p, np.float32).ravel() for p in pictures])


def standardise(index: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``index`` and ``others`` standardised with the index's per-column mean and deviation."""
    mean, std = index.mean(axis=0), index.std(axis=0) + 1e-6
    return [((a - mean) / std).astype(np.float32) for a in (index, *others)]


# --------------------------------------------------------------------------- metrics (pure)


def setting_label(setting) -> str:
    """'0.80' for MMR alone (its trade-off), 'cap 2 @0.6' for the variant cap (+ MMR's trade-off below 1)."""
    trade_off, per_group, closeness = setting
    if not per_group:
        return f"{trade_off:.2f}"
    return f"cap {per_group} @{closeness:.1f}" + (f" + {trade_off:.2f}" if trade_off < 1 else "")


PLAIN = setting_label(SETTINGS[0])  # nearest first: every change is against it


def panel_metrics(*, query_vectors, query_labels, index_vectors, index_labels, index_family, spaces=None,
                  settings=SETTINGS, k: int = K, pool: int = POOL, exclude_self: bool = False) -> dict:
    """Per setting (trade-off, per_group, closeness; :func:`setting_label` names it, the first is the
    baseline), over queries: P@k (same category), distinct families among the k, distinct families
    of the query's category among them (relevant_families), share of panels with CROWDED or more of
    one family, intra-list distance in the embedding and in each of ``spaces`` ({name: index
    rows}). ``exclude_self``: the queries are the index rows themselves (product pages), each left
    out of its own pool. Also ``pool_crowded_share``: queries whose pool holds CROWDED or more
    products of one family (what the re-ranker can act on)."""
    query_vectors = np.asarray(query_vectors, dtype=np.float64)
    index_vectors = np.asarray(index_vectors, dtype=np.float64)
    query_labels, index_labels, index_family = map(np.asarray, (query_labels, index_labels, index_family))
    spaces = {"embedding": index_vectors, **{name: np.asarray(v, np.float64) for name, v in (spaces or {}).items()}}
    neighbours = nearest(query_vectors, index_vectors, pool, exclude_self=exclude_self)
    labels = [setting_label(s) for s in settings]
    sums = {name: dict.fromkeys([f"precision_at_{k}", "distinct_families", "relevant_families", "crowded_share",
                                 *(f"intra_list_distance_{space}" for space in spaces)], 0.0) for name in labels}
    pool_crowded, hits = 0, {name: [] for name in labels}  # hits: per-query P@k, for the change's error
    for query, label, rows in zip(query_vectors, query_labels, neighbours):
        candidates = index_vectors[rows]
        relevance = np.linalg.norm(candidates - query[None, :], axis=1)
        pairwise = pairwise_distances(candidates)
        pool_crowded += np.bincount(index_family[rows]).max() >= CROWDED
        for name, (t, per_group, closeness) in zip(labels, settings):
            groups = variant_groups(relevance=relevance, pairwise=pairwise, closeness=closeness) if per_group else None
            picked = rows[mmr_order_from_distances(relevance=relevance, pairwise=pairwise, k=k, trade_off=t,
                                                   groups=groups, per_group=per_group)]
            s = sums[name]
            hits[name].append(float(np.mean(index_labels[picked] == label)))
            s[f"precision_at_{k}"] += hits[name][-1]
            s["distinct_families"] += len(set(index_family[picked].tolist()))
            s["relevant_families"] += len(set(index_family[picked][index_labels[picked] == label].tolist()))
            s["crowded_share"] += np.bincount(index_family[picked]).max() >= CROWDED
            for space, vectors in spaces.items():
                s[f"intra_list_distance_{space}"] += intra_list_distance(vectors[picked])
    n = max(len(query_vectors), 1)
    base = np.asarray(hits[labels[0]])
    return {"queries": len(query_vectors), "pool_crowded_share": pool_crowded / n,
            "by_setting": {name: {**{key: float(v) / n for key, v in s.items()},
                                  f"precision_at_{k}_change_se": paired_se(np.asarray(hits[name]) - base)}
                           for name, s in sums.items()}}


def paired_se(differences: np.ndarray) -> float:
    """Standard error of the mean of per-query differences (0 for fewer than two)."""
    return float(differences.std(ddof=1) / np.sqrt(len(differences))) if len(differences) > 1 else 0.0


def combined(parts: list[dict]) -> dict:
    """Metrics of several query sets together (each weighted by its queries)."""
    n = sum(p["queries"] for p in parts)

    def mean(t, key):
        if key.endswith("_se"):  # independent sets: the weighted mean's error
            return float(np.sqrt(sum((p["by_setting"][t][key] * p["queries"]) ** 2 for p in parts)) / n)
        return sum(p["by_setting"][t][key] * p["queries"] for p in parts) / n

    return {"queries": n, "pool_crowded_share": sum(p["pool_crowded_share"] * p["queries"] for p in parts) / n,
            "by_setting": {t: {key: mean(t, key) for key in parts[0]["by_setting"][t]}
                           for t in parts[0]["by_setting"]}}


def sibling_nearest_share(vectors, family, family_size) -> float:
    """Share of products of families of 2 or more whose nearest other product is a sibling: how
    near-identical the variants are in this embedding."""
    rows = np.flatnonzero(np.asarray(family_size) > 1)
    found = nearest(np.asarray(vectors)[rows], vectors, 2)
    other = np.where(found[:, 0] == rows, found[:, 1], found[:, 0])  # itself, unless an exact tie
    return float(np.mean(np.asarray(family)[other] == np.asarray(family)[rows]))


def sibling_duplicate_share(files: list[bytes], family) -> float:
    """Share of pairs of siblings within DUPLICATE_MAX_BITS of each other by the 256-bit DCT hash,
    the mirror image counted (catalog.perceptual, as catalog.duplicates compares them): pairs the
    duplicate detector would flag, hidden from each other's panels while the pair is open."""
    family = np.asarray(family)
    both = [perceptual.hashes(catalogs.decode(f)) for f in files]
    flagged = pairs = 0
    for f in np.unique(family):
        members = np.flatnonzero(family == f)
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                pairs += 1
                if both[a] is not None and both[b] is not None:
                    flagged += min(perceptual.hamming(both[a][0], both[b][0]),
                                   perceptual.hamming(both[a][1], both[b][0])) <= DUPLICATE_MAX_BITS
    return flagged / pairs if pairs else 0.0


# --------------------------------------------------------------------------- embeddings


def head_embedder(spec, epochs: int, log=print):
    """The product's embeddings: backbone features of the decoded images, then a head trained on
    the catalog's categories. A callable (catalog files, labels, query files) -> (index, queries,
    info); info["features"] holds the standardised backbone features (index, queries)."""

    def embed(files, labels, query_files):
        from recommender.backbone import get_backbone
        from recommender.head import HeadConfig, train_head

        backbone = get_backbone(spec, batch_size=64)
        started = time.perf_counter()
        features = backbone.extract([catalogs.decode(f) for f in files])
        query_features = backbone.extract([catalogs.decode(f) for f in query_files])
        extraction = time.perf_counter() - started
        log(f"  {len(files) + len(query_files):,} images extracted in {extraction:.1f} s ({backbone.runtime}); "
            f"training the head ({epochs} epochs)...")
        trained = train_head(features, np.asarray(labels), HeadConfig(epochs=epochs))
        info = {"extraction_seconds": round(extraction, 1), "runtime": backbone.runtime,
                "training_seconds": round(trained.seconds, 1),
                "val_accuracy": (trained.history.get("val_accuracy") or [None])[-1],
                "features": standardise(features, query_features)}
        return trained.head.embed(features), trained.head.embed(query_features), info

    return embed


def pixel_embedder(files, labels, query_files):
    """Standardised raw pixels as the embedding (the tests' stand-in: no TensorFlow)."""
    index, queries = standardise(pixel_vectors(files), pixel_vectors(query_files))
    return index, queries, {}


# --------------------------------------------------------------------------- one catalog


def measure_source(source: str, n_families: int, n_queries: int, embed, log=print) -> dict:
    """Build ``source``'s variant-heavy catalog and held-out queries, embed them with ``embed``
    (:func:`head_embedder` or :func:`pixel_embedder`), and measure the panels at each trade-off."""
    from recommender.evaluation import retrieval_metrics

    started = time.perf_counter()
    catalog, queries = family_catalog(source, n_families), held_out(source, n_queries)
    labels, family = catalog["labels"], catalog["family"]
    log(f"[{source}] {len(labels):,} products in {n_families:,} families, {n_queries:,} held-out queries "
        f"(generated in {time.perf_counter() - started:.1f} s)")
    e_index, e_query, info = embed(catalog["files"], labels, queries["files"])
    features = info.pop("features", None)
    (p_index,) = standardise(pixel_vectors(catalog["files"]))
    shared = {"index_vectors": e_index, "index_labels": labels, "index_family": family,
              "spaces": {"raw_pixels": p_index}}
    held = panel_metrics(query_vectors=e_query, query_labels=queries["labels"], **shared)
    # The same panels as recommender.diversity.rerank_metrics' (bench/quality.py's measure).
    check = rerank_metrics(query_vectors=e_query, query_labels=queries["labels"], index_vectors=e_index,
                           index_labels=labels, trade_offs=TRADE_OFFS, k=K, pool=POOL,
                           spaces={"raw_pixels": p_index})
    for t, expected in check.items():
        for key, value in expected.items():
            assert abs(held["by_setting"][setting_label((t, 0, 0.0))][key] - value) < 1e-6, (source, t, key, value)
    pages = panel_metrics(query_vectors=e_index, query_labels=labels, exclude_self=True, **shared)
    sizes = {str(v): int(np.sum(catalog["family_size"][np.unique(family, return_index=True)[1]] == v))
             for v in FAMILY_SIZES}
    result = {
        "source": source, "categories": len(set(labels.tolist())), "products": len(labels), "families": sizes,
        "queries": n_queries, "embedding": info,
        "sibling_nearest_share": sibling_nearest_share(e_index, family, catalog["family_size"]),
        "sibling_duplicate_share": sibling_duplicate_share(catalog["files"], family),
        "features_precision_at_6": None if features is None else
        retrieval_metrics(features[1], queries["labels"], features[0], labels, k=K)["precision_at_6"],
        "held_out": held, "product_pages": pages, "seconds": round(time.perf_counter() - started, 1)}
    plain = held["by_setting"][PLAIN]
    log(f"  plain panels: P@6 {plain['precision_at_6']:.3f}, {plain['distinct_families']:.2f} distinct families, "
        f"{plain['crowded_share']:.1%} crowded; variants nearest a sibling {result['sibling_nearest_share']:.1%} "
        f"({result['seconds']} s)")
    return result


# --------------------------------------------------------------------------- tables


COLUMNS = ["Re-ranking (1.00 = nearest first; 0.xx = MMR; cap N @c = at most N of a variant group)", "P@6", "P@6 change (± 1 s.e.)", "Distinct families in 6", "Change",
           "Same-category families in 6",
           f"Panels with >= {CROWDED} of a family", "Intra-list distance, embedding", "Gain",
           "Intra-list distance, raw pixels", "Gain"]


def trade_off_rows(m: dict, first: list | None = None) -> list[list]:
    base = m["by_setting"][PLAIN]
    rows = []
    for t, r in m["by_setting"].items():
        gains = [r[f"intra_list_distance_{s}"] / base[f"intra_list_distance_{s}"] - 1
                 for s in ("embedding", "raw_pixels")]
        rows.append([*(first or []), t, f"{r['precision_at_6']:.4f}",
                     f"{r['precision_at_6'] - base['precision_at_6']:+.4f} ± {r['precision_at_6_change_se']:.4f}",
                     f"{r['distinct_families']:.3f}",
                     f"{r['distinct_families'] - base['distinct_families']:+.3f}", f"{r['relevant_families']:.3f}",
                     f"{r['crowded_share']:.1%}",
                     f"{r['intra_list_distance_embedding']:.2f}", f"{gains[0]:+.1%}",
                     f"{r['intra_list_distance_raw_pixels']:.2f}", f"{gains[1]:+.1%}"])
    return rows


def catalog_table(results: list[dict], spec, epochs: int) -> dict:
    rows = []
    for r in results:
        fams = r["families"]
        rows.append([r["source"], r["categories"], f"{fams['1']}/{fams['3']}/{fams['6']}", r["products"], r["queries"],
                     r["embedding"].get("val_accuracy"), r["held_out"]["by_setting"][PLAIN]["precision_at_6"],
                     r["features_precision_at_6"], f"{r['sibling_nearest_share']:.1%}",
                     f"{r['sibling_duplicate_share']:.1%}",
                     f"{r['held_out']['pool_crowded_share']:.1%}",
                     f"{r['held_out']['by_setting'][PLAIN]['crowded_share']:.1%}"])
    return common.table(
        "Variant-heavy catalogs (families of 1, 3 and 6 near-identical products; held-out queries)",
        ["Catalog", "Categories", "Families V=1/3/6", "Products", "Queries", "Head val. accuracy", "P@6, head",
         "P@6, std. features", "Variants nearest a sibling", "Sibling pairs a duplicate",
         f"Pools with >= {CROWDED} of a family",
         f"Plain panels with >= {CROWDED} of a family"], rows,
        [f"Backbone {spec.identity}; head {epochs} epochs, trained on each catalog's categories; embeddings: its "
         "standardised 512-d mid layer. P@6 at trade-off 1 (plain panels); 'std. features' = the backbone's "
         "standardised features, for reference.",
         "Variants: hue turned 2-6%, brightness x0.95-1.05, 1-3% cropped and scaled back, re-encoded.",
         f"Sibling pairs a duplicate: within {DUPLICATE_MAX_BITS} bits by the 256-bit DCT hash (catalog.duplicates' "
         "default): pairs the detector would flag, hidden from each other's panels until staff decide. The "
         "benchmark keeps every variant in the panels (variants staff judged distinct)."])


def tables_for(results: list[dict], overall: dict, spec, epochs: int) -> list[dict]:
    note = (f"Each query's {POOL} nearest products re-ranked (recommender.diversity): 0.xx = MMR at that trade-off "
            "(RECOMMENDER['DIVERSITY_LAMBDA']); cap N @c = nearest first with at most N of a variant group "
            "(RECOMMENDER['DIVERSITY_VARIANTS_MAX']), variants linked when closer than c x the pool's median distance "
            "to the query (['DIVERSITY_VARIANT_CLOSENESS']; single linkage, the query in its own group); intra-list distance: "
            f"mean over the 15 pairs of the {K}, raw pixels = {PIXELS}x{PIXELS} RGB standardised on the catalog. "
            "Same-category families: distinct families of the query's category among the 6.")
    tables = [catalog_table(results, spec, epochs)]
    for r in results:
        tables.append(common.table(f"Held-out queries, {r['source']} ({r['queries']:,} queries, {r['products']:,} "
                                   "products)", COLUMNS, trade_off_rows(r["held_out"]), [note]))
    tables.append(common.table(f"Held-out queries, all catalogs ({overall['held_out']['queries']:,} queries)",
                               COLUMNS, trade_off_rows(overall["held_out"]), [note, "Each query weighs the same."]))
    pages = [row for r in results for row in trade_off_rows(r["product_pages"], [r["source"]])]
    pages += trade_off_rows(overall["product_pages"], ["all"])
    tables.append(common.table(
        "Product pages: each catalog product's own panel (itself left out; its siblings are the nearest)",
        ["Catalog", *COLUMNS], pages,
        [note, "The panel the setting re-ranks (recommender.selectors.similarity: the product's image as the query, "
               "the product left out). P@6 is flattered here: a sibling always shares the category."]))
    return tables


# --------------------------------------------------------------------------- main


def backbone_weights() -> tuple[str, str]:
    """The weights of this run and why: RECOMMENDER_BACKBONE_WEIGHTS when set (as run_all exports
    it), else seeded random weights: the product's fallback, the case this benchmark is for."""
    if os.environ.get("RECOMMENDER_BACKBONE_WEIGHTS"):
        decision = common.decide_weights()
        return decision["weights"], decision["reason"]
    return "random", ("seeded random weights, this benchmark's default: what the product runs when ImageNet "
                      "weights cannot be had (RECOMMENDER_BACKBONE_WEIGHTS=imagenet measures those)")


def main(argv=None) -> int:
    def extra(parser):
        parser.add_argument("--sources", default=",".join(SOURCES), help="catalogs of bench/catalogs.py")
        parser.add_argument("--no-write", action="store_true", help="print only")

    args = common.parse_mode(argv, extra=extra)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = set(sources) - set(catalogs.CATALOGS)
    if unknown or not sources:
        raise SystemExit(f"unknown or no catalog(s): {', '.join(sorted(unknown))}")
    common.quiet_tensorflow()
    from recommender.backbone import BackboneSpec

    started = time.perf_counter()
    weights, reason = backbone_weights()
    input_size = 32 if args.mode == "quick" else int(os.environ.get("RECOMMENDER_INPUT_SIZE", 224))
    epochs = int(os.environ.get("RECOMMENDER_EPOCHS", 32))
    spec = BackboneSpec(weights=weights, input_size=input_size)
    n_families, n_queries = SIZES[args.mode]
    print(f"Backbone {spec.identity} ({reason}); head {epochs} epochs; settings "
          f"{', '.join(setting_label(x) for x in SETTINGS)}")
    embed = head_embedder(spec, epochs)
    results = [measure_source(source, n_families, n_queries, embed) for source in sources]
    overall = {view: combined([r[view] for r in results]) for view in ("held_out", "product_pages")}
    tables = tables_for(results, overall, spec, epochs)
    for t in tables:
        common.print_table(t)
    seconds = round(time.perf_counter() - started, 1)
    print(f"\n{seconds} s in all")
    if not args.no_write:
        common.write_result("diversity", {
            "mode": args.mode, "weights": weights, "weights_reason": reason, "random_weights": spec.is_random,
            "backbone": spec.identity, "input_size": input_size, "epochs": epochs,
            "protocol": {"sources": sources, "families_per_catalog": n_families, "family_sizes": list(FAMILY_SIZES),
                         "queries_per_catalog": n_queries, "k": K, "pool": POOL, "crowded": CROWDED,
                         "trade_offs": list(TRADE_OFFS), "caps": [list(c) for c in CAPS],
                         "settings": [setting_label(x) for x in SETTINGS], "seed": SEED, "query_seed": SEED + 1},
            "catalogs": {r["source"]: r for r in results}, "overall": overall, "tables": tables,
            "seconds": seconds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
