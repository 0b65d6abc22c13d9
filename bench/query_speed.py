"""Benchmark 3: similar-items query latency and recall at 10,000 and 100,000 products.

For each scale, one embedding per product is loaded into the embedded PostgreSQL + pgvector of a
temporary VAR_DIR, the project's HNSW index is rebuilt (timed, and its size measured), and the
similar-items query of ``recommender.selectors.similarity`` (top 6 distinct other products) is timed for:

- the HNSW index with pgvector's default ``ef_search`` (40), ours (100, settings) and 200;
- an exact scan in SQL (the selectors' exact path: ORDER BY an expression the index cannot serve);
- numpy brute force over the same vectors in memory;
- the product panel's precomputed lists (recommender/services/neighbours.py: each product's exact
  top 32, built after the index and timed; the HNSW rows are measured with them moved aside,
  which is how the selector answered before them).

Recall@6 of every method is measured against the exact SQL scan. The same again with a category
filter that 10% of the rows match (pgvector's iterative index scan must still return k rows).

At 100,000 the index is then dropped and rebuilt a few more times (same rows, same definition) and
the HNSW recall measured again on each build: pgvector builds the graph with parallel workers, and
the graph (so its recall) differs from one build to the next. One build's recall is one sample.

Vectors: at 10,000, our pipeline's real embeddings of the Fashion-MNIST test images when
bench/quality.py has run (else synthetic); at 100,000, synthetic 512-d vectors drawn per class from
a Gaussian with the real embeddings' class means and per-dimension spreads (a 10-cluster mixture).

--full adds a 1,000,000-product point (above 300,000 only the query products' lists are built
and the build time is extrapolated); --scales 100000,300000 picks the sizes.

    python bench/query_speed.py [--quick | --full] [--scales N,N] [--rebuilds N]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from bench.vector_catalog import load_catalog, rebuild_index, work_mem_gib  # noqa: E402

K = 6
DIM = 512
N_CLASSES = 10


def real_embeddings(mode: str):
    """Our pipeline's embeddings from bench/quality.py (same weights), or None."""
    candidates = sorted(common.CACHE.glob(f"embeddings__*{common.weights().replace(':', '_')}*__*.npz"),
                        key=lambda p: (mode not in p.name, -p.stat().st_mtime))
    for path in candidates:
        data = np.load(path, allow_pickle=False)
        return data["vectors"].astype(np.float32), data["labels"].astype(str), str(data["identity"]), path.name
    return None


def synthetic(n: int, real, seed: int = 7):
    """A 10-class Gaussian mixture shaped like the real embeddings (class means and per-dimension
    spreads), or a generic one when no real embeddings exist."""
    rng = np.random.default_rng(seed)
    labels = np.array([common.CLASS_NAMES[i % N_CLASSES] for i in range(n)])
    rng.shuffle(labels)
    out = np.empty((n, DIM), dtype=np.float32)
    if real is not None:
        vectors, real_labels = real[0], real[1]
        for name in np.unique(labels):
            rows = labels == name
            own = vectors[real_labels == name] if (real_labels == name).any() else vectors
            mean, std = own.mean(axis=0), own.std(axis=0) + 1e-3
            out[rows] = mean + std * rng.standard_normal((rows.sum(), DIM), dtype=np.float32)
    else:
        centres = rng.standard_normal((N_CLASSES, DIM), dtype=np.float32)
        index = np.searchsorted(np.array(common.CLASS_NAMES), labels, sorter=np.argsort(common.CLASS_NAMES))
        order = np.argsort(common.CLASS_NAMES)
        out[:] = centres[order[index]] + rng.standard_normal((n, DIM), dtype=np.float32)
    return out, labels


# --------------------------------------------------------------------------- methods


def with_ef(ef):
    from django.conf import settings

    settings.RECOMMENDER = {**settings.RECOMMENDER, "EF_SEARCH": int(ef)}


def sql_method(version, ef, exact, images=None):
    """nearest_products by the query vector (the index; before the lists), or, given ``images``
    (product id -> its query image id), as the product panel asks: by its query image."""
    from recommender.selectors.similarity import nearest_products

    def run(vector, pid, category):
        query = {"image": images[int(pid)]} if images is not None else {"vector": vector}
        rows = nearest_products(version=version, k=K, exact=exact, exclude_product=int(pid), category=category,
                                **query)
        return [p for p, _ in rows]

    def prepare():
        if ef:
            with_ef(ef)

    return prepare, run


def numpy_method(vectors, product_ids, category_ids):
    squared = (vectors.astype(np.float32) ** 2).sum(axis=1)
    position = {int(p): i for i, p in enumerate(product_ids)}

    def run(vector, pid, category):
        d = squared - 2.0 * (vectors @ vector)
        d[position[int(pid)]] = np.inf
        if category is not None:
            d = np.where(category_ids == category, d, np.inf)
        top = np.argpartition(d, K)[:K]
        top = top[np.argsort(d[top])]
        return [int(product_ids[i]) for i in top if np.isfinite(d[i])]

    return (lambda: None), run


LISTS_FULL_BUILD_MAX = 300_000  # above: exact lists for all products take hours on 2 cores (n^2)


def lists_build(version, query_products=None) -> dict:
    """The product panel's precomputed lists (recommender.services.neighbours), timed and sized.

    Above LISTS_FULL_BUILD_MAX products only the query products get their (exact) lists, which
    is all the timed lookups read; the build time and size are then extrapolated to every product
    (linear: each list costs one pass over all rows) and marked so."""
    from django.db import connection

    from recommender.services import neighbours

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM recommender_embedding WHERE version_id = %s", [version.pk])
        n = cursor.fetchone()[0]
    if n <= LISTS_FULL_BUILD_MAX or query_products is None:
        built = neighbours.neighbours_rebuild(version_id=version.pk)
        scale, built["extrapolated"] = 1.0, False
    else:
        built = neighbours.neighbours_rebuild(version_id=version.pk, product_ids=query_products)
        scale = n / max(built["products"], 1)
        # The rows are read once whatever the number of lists; each list costs one pass over them.
        # A few dozen lists make one short block, dearer per list than the full build's blocks of
        # BLOCK: an upper bound.
        computed = built["seconds"] - built["read_seconds"]
        built = {"products": n, "seconds": round(built["read_seconds"] + computed * scale, 1), "extrapolated": True}
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size('recommender_neighbours')")
        built["mib"] = round(cursor.fetchone()[0] * scale / 2 ** 20, 1)
    return built


class lists_off:
    """The index path alone (the 'before'): the lists' state row is moved aside, so the selector
    finds no list and answers from the HNSW index as it did before the lists existed."""

    def __init__(self, version):
        self.version = version

    def __enter__(self):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM recommender_neighbours_state WHERE version_id = %s RETURNING upto, rows",
                           [self.version.pk])
            self.state = cursor.fetchone()

    def __exit__(self, *exc):
        from django.db import connection

        if self.state:
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO recommender_neighbours_state (version_id, upto, rows) VALUES (%s, %s, %s)",
                               [self.version.pk, *self.state])


def measure(name, prepare, run, queries, exact_results, warmup: int, budget_s: float):
    prepare()
    for vector, pid, category in queries[:warmup]:
        run(vector, pid, category)
    latencies, results = [], []
    deadline = time.perf_counter() + budget_s
    for vector, pid, category in queries:
        started = time.perf_counter()
        ids = run(vector, pid, category)
        latencies.append(time.perf_counter() - started)
        results.append(ids)
        if time.perf_counter() > deadline and len(latencies) >= 20:
            break  # bounded: a slow method stops early (its n is reported)
    from recommender.evaluation import recall_against_exact

    recall = recall_against_exact(results, exact_results[:len(results)]) if exact_results is not None else 1.0
    short = sum(1 for r in results if len(r) < K)
    return {"method": name, **common.percentiles_ms(latencies), "recall_at_6": round(recall, 4),
            "short_results": short, "queries": len(results)}, results


def main():
    args = common.parse_mode(extra=lambda parser: (parser.add_argument(
        "--rebuilds", type=int, default=None,
        help="extra builds of the largest index to measure recall on (default: 2 quick, 4 full)"), parser.add_argument(
        "--scales", type=str, default=None,
        help="comma-separated catalog sizes (default: 10000,100000 quick; 10000,100000,1000000 full)")))
    quick = args.mode == "quick"
    common.isolate("query")
    common.django_setup()
    from django.db import connection

    # Quick: fewer queries at 100,000, where the exact scan (the recall reference) costs ~0.4 s each.
    scales = ([int(x) for x in args.scales.split(",")] if args.scales else
              [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])
    # The exact scan (the recall reference) costs ~0.4 s a query at 100,000, ~4 s at 1,000,000.
    n_queries = {n: (200 if n <= 10_000 else 100 if n <= 100_000 else 40) if quick else
                 (1000 if n <= 100_000 else 200) for n in scales}
    budget = 25.0 if quick else 300.0
    efs = [40, 100, 200]
    # Rebuilds at 100,000 (the scale) when measured: at 1,000,000 one build takes ~15 min.
    rebuild_scale = 100_000 if 100_000 in scales else max(scales)
    real = real_embeddings(args.mode)
    started_all = time.perf_counter()
    tables, scale_results, headline = [], {}, {}
    rng = np.random.default_rng(11)
    for n in scales:
        if n <= 10_000 and real is not None and len(real[0]) >= n:
            vectors, labels = real[0][:n], real[1][:n]
            source = f"real: our pipeline's embeddings of Fashion-MNIST test images ({real[2]}, from quality.py)"
        else:
            vectors, labels = synthetic(n, real)
            source = ("synthetic: 10-class Gaussian mixture with the real embeddings' class means and spreads"
                      if real is not None else "synthetic: 10-class Gaussian mixture (no real embeddings found)")
        print(f"\n{n:,} products ({source.split(':')[0]}): loading...")
        version, product_ids, category_ids, build = load_catalog(vectors, labels)
        print(f"  HNSW build {build['index_build_seconds']} s, index {build['index_mib']} MiB", flush=True)
        picks = rng.choice(n, size=min(n_queries[n], n), replace=False)
        build["lists"] = lists_build(version, query_products=product_ids[picks])
        from catalog.models import ProductImage

        images = dict(ProductImage.objects.filter(product_id__in=product_ids[picks].tolist())
                      .values_list("product_id", "id"))
        print(f"  neighbour lists built in {build['lists']['seconds']} s, {build['lists']['mib']} MiB"
              + (" (extrapolated from the query products' lists)" if build["lists"]["extrapolated"] else ""),
              flush=True)
        results = {"vectors": source, "build": build, "plain": [], "filtered": []}
        for filtered in (False, True):
            queries = [(vectors[i], product_ids[i], int(category_ids[i]) if filtered else None) for i in picks]
            match = float(np.mean(category_ids == category_ids[picks[0]])) if filtered else 1.0
            exact_prepare, exact_run = sql_method(version, None, exact=True)
            exact_row, exact_ids = measure("Exact scan in SQL", exact_prepare, exact_run, queries, None,
                                           warmup=5, budget_s=budget)
            exact_row["recall_at_6"] = 1.0
            exact_ids_full = exact_ids
            if len(exact_ids) < len(queries):  # the bounded exact run stopped early: finish the reference
                exact_ids_full = exact_ids + [exact_run(v, p, c) for v, p, c in queries[len(exact_ids):]]
            if not filtered:
                plain_exact = exact_ids_full
            rows = []
            with lists_off(version):  # before: the index alone
                for ef in efs:
                    prepare, run = sql_method(version, ef, exact=False)
                    label = f"HNSW, ef_search={ef}" + {40: " (pgvector default)", 100: " (before: ours)"}.get(ef, "")
                    row, _ = measure(label, prepare, run, queries, exact_ids_full, warmup=20, budget_s=budget)
                    rows.append(row)
            prepare, run = sql_method(version, 100, exact=False, images=images)
            row, _ = measure("Precomputed lists, index fallback ef_search=100 (after: ours)", prepare, run, queries,
                             exact_ids_full, warmup=20, budget_s=budget)
            rows.append(row)
            rows.append(exact_row)
            prepare, run = numpy_method(vectors, product_ids, category_ids)
            row, _ = measure("numpy brute force (in memory)", prepare, run, queries, exact_ids_full,
                             warmup=5, budget_s=budget)
            rows.append(row)
            with_ef(100)
            for row in rows:
                print(f"  {'filtered ' if filtered else ''}{row['method']}: p50 {row['p50_ms']} ms, "
                      f"p99 {row['p99_ms']} ms, recall@6 {row['recall_at_6']}, short {row['short_results']}")
            results["filtered" if filtered else "plain"] = rows
            results["filter_match_share" if filtered else "rows"] = round(match, 3) if filtered else n
        scale_results[str(n)] = results
        headline[f"{n}_hnsw100_p50_ms"] = results["plain"][1]["p50_ms"]
        headline[f"{n}_exact_sql_p50_ms"] = results["plain"][4]["p50_ms"]
        headline[f"{n}_hnsw100_recall"] = results["plain"][1]["recall_at_6"]
        for key, part in (("", "plain"), ("_filtered", "filtered")):
            lists = results[part][3]
            headline[f"{n}_lists{key}"] = {"p50_ms": lists["p50_ms"], "p99_ms": lists["p99_ms"],
                                           "recall": lists["recall_at_6"], "short": lists["short_results"]}
        if n == rebuild_scale:
            # The same index built again: how much of the recall is this one graph's luck.
            plain_queries = [(vectors[i], product_ids[i], None) for i in picks]
            builds = [{"build": 1, "seconds": results["build"]["index_build_seconds"],
                       **{f"ef{ef}": row["recall_at_6"] for ef, row in zip(efs, results["plain"])},
                       "lists": results["plain"][3]["recall_at_6"], "lists_p50": results["plain"][3]["p50_ms"],
                       "lists_p99": results["plain"][3]["p99_ms"]}]
            n_rebuilds = args.rebuilds if args.rebuilds is not None else (2 if quick else 4)
            for b in range(n_rebuilds):
                seconds = rebuild_index(results["build"]["index_definition"])
                entry = {"build": b + 2, "seconds": seconds}
                with lists_off(version):
                    for ef in efs:
                        prepare, run = sql_method(version, ef, exact=False)
                        row, _ = measure(f"ef{ef}", prepare, run, plain_queries, plain_exact, warmup=5, budget_s=budget)
                        entry[f"ef{ef}"] = row["recall_at_6"]
                prepare, run = sql_method(version, 100, exact=False, images=images)
                row, _ = measure("lists", prepare, run, plain_queries, plain_exact, warmup=5, budget_s=budget)
                entry.update(lists=row["recall_at_6"], lists_p50=row["p50_ms"], lists_p99=row["p99_ms"])
                with_ef(100)
                print(f"  rebuild {b + 2}: {seconds} s, recall@6 " +
                      ", ".join(f"ef_search={ef} {entry[f'ef{ef}']}" for ef in efs) +
                      f", lists {entry['lists']} (p50 {entry['lists_p50']} ms)", flush=True)
                builds.append(entry)
            results["builds"] = builds
            recalls = [e["ef100"] for e in builds]
            headline[f"{n}_hnsw100_recall_builds"] = [min(recalls), max(recalls), len(recalls)]
            headline[f"{n}_lists_worst_build"] = {"recall": min(e["lists"] for e in builds),
                                                  "p50_ms": max(e["lists_p50"] for e in builds),
                                                  "p99_ms": max(e["lists_p99"] for e in builds)}

    # Tables: one per scale, plain and filtered side by side.
    for n, res in scale_results.items():
        rows = []
        for plain, filt in zip(res["plain"], res["filtered"]):
            rows.append([plain["method"], plain["p50_ms"], plain["p99_ms"], plain["recall_at_6"],
                         filt["p50_ms"], filt["p99_ms"], filt["recall_at_6"],
                         f"{filt['short_results']} of {filt['queries']}"])
        b = res["build"]
        tables.append(common.table(
            f"Similar-items query, {int(n):,} products ({res['vectors'].split(':')[0]} 512-d embeddings)",
            ["Method", "p50 ms", "p99 ms", "Recall@6", "Filtered p50 ms", "Filtered p99 ms", "Filtered recall@6",
             "Filtered results < k"], rows,
            [f"Vectors: {res['vectors']}.",
             f"Filter: one category, {res['filter_match_share']:.0%} of the rows; recall is against the "
             "exact SQL scan with the same filter.",
             f"HNSW index (m=16, ef_construction=64) built in {b['index_build_seconds']} s on "
             f"{int(n):,} rows with maintenance_work_mem={work_mem_gib(int(n))}GB; index {b['index_mib']} MiB; "
             f"table with indexes {b['table_total_mib']} MiB.",
             "Latency is of recommender.selectors.similarity.nearest_products (a transaction, SET LOCAL ef_search and "
             "iterative scan, the top-k distinct-products query) over a local socket; numpy is the matrix "
             "product and partial sort alone.",
             "Precomputed lists: recommender.services.neighbours' exact top-32 of each product, read in one "
             "query by nearest_products (the HNSW rows above are measured with the lists moved aside, as "
             "before them); the index (ef_search=100) answers only when fewer than k listed products pass."]))
    for n, res in scale_results.items():
        if res.get("builds"):
            tables.append(common.table(
                f"HNSW recall@6 across builds of the same index, {int(n):,} products",
                ["Build", "Build s", *[f"Recall@6, ef_search={ef}" for ef in efs], "Recall@6, lists (after)",
                 "Lists p50 ms", "Lists p99 ms"],
                [[e["build"], e["seconds"], *[e[f"ef{ef}"] for ef in efs], e["lists"], e["lists_p50"], e["lists_p99"]]
                 for e in res["builds"]] + [["worst", max(e["seconds"] for e in res["builds"]),
                                             *[min(e[f"ef{ef}"] for e in res["builds"]) for ef in efs],
                                             min(e["lists"] for e in res["builds"]),
                                             max(e["lists_p50"] for e in res["builds"]),
                                             max(e["lists_p99"] for e in res["builds"])]],
                ["Same rows, same index definition, dropped and rebuilt (2 parallel maintenance workers); "
                 "build 1 is the one in the table above; queries are the same products, unfiltered.",
                 "The graph differs between builds, so one build's recall is one sample: quote the range. "
                 "Higher ef_search narrows it; RECOMMENDER_EF_SEARCH sets it, and every model version "
                 "records its own index recall against an exact scan (evaluation, shown in the dashboard)."]))
    build_rows = [[f"{int(n):,}", r["build"]["index_build_seconds"], r["build"]["index_mib"],
                   r["build"]["table_total_mib"], r["build"]["copy_seconds"], r["build"]["lists"]["seconds"],
                   r["build"]["lists"]["mib"]] for n, r in scale_results.items()]
    tables.append(common.table("HNSW index build", ["Products", "Build s", "Index MiB", "Table+indexes MiB",
                                                    "COPY of the vectors s", "Lists build s", "Lists MiB"], build_rows,
                               ["CREATE INDEX ... USING hnsw (vector vector_l2_ops) WITH (m=16, ef_construction=64), "
                                "the project's own index definition, on the loaded table."]))
    for t in tables:
        common.print_table(t)
    shrunk = [f"query products: {', '.join(f'{q} at {n:,}' for n, q in n_queries.items())} (full: 1,000 each); "
              f"each method's timed queries bounded to {budget:.0f} s"] if quick else []
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        pgvector_version = cursor.fetchone()[0]
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
    common.write_result("query_speed", {
        "mode": args.mode, "k": K, "scales": scale_results, "headline": headline, "shrunk": shrunk,
        "postgres": pg_version, "pgvector": pgvector_version, "tables": tables,
        "seconds": round(time.perf_counter() - started_all, 1)})


if __name__ == "__main__":
    main()
