"""Benchmark 1: retrieval quality on Fashion-MNIST, with the original post's protocol.

Train on the first 15,000 training images (20% of them held out for validation), use the first
5,000 test images as the recommendation set, query with the other 5,000 test images. Same-category
retrieval by Euclidean nearest neighbours: precision@1, precision@6, mAP@6; and the head's
accuracy on the 5,000 query images. Then an imbalanced training set (four classes cut to 10%),
trained with and without class weights.

    python bench/quality.py [--quick | --full] [--diversity-only]

Diversity: the head's panels re-ranked by maximal marginal relevance (recommender.diversity) at
a few trade-offs, from each query's 24 nearest: P@6 (what it costs) and the mean intra-list
distance of the 6 (what it gains), in the embedding and in raw pixels (a space MMR does not
optimise). ``--diversity-only`` trains our head and measures only that (a few minutes on 2 cores
once the features are cached), into bench/results/quality_diversity.json.

``--quick`` (make bench) runs the whole protocol (all 25,000 images) at input size 32 and trains
for 6 epochs; ``--full`` uses $RECOMMENDER_INPUT_SIZE (default 224) and the configured 32 epochs.
Weights: $RECOMMENDER_BACKBONE_WEIGHTS, else 'random' (recorded in the results).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402

N_TRAIN, N_INDEX, N_QUERY = 15_000, 5_000, 5_000
CUT_CLASSES = [0, 2, 4, 6]  # T-shirt/top, Pullover, Coat, Shirt: the classes most easily confused
CUT_KEEP = 0.10
# The backbone kind's row: the product's defaults (RECOMMENDER_BACKBONE_INPUT_SIZE and _EPOCHS), in
# the quick run too (~13 min on 2 cores). Fewer images would cost more than they save: 5,000 images
# reached a validation accuracy of ~0.63 after 2 epochs against 0.81 with all 12,000.
BACKBONE_SIZE = 32
BACKBONE_EPOCHS = 6
# MMR's trade-off (RECOMMENDER["DIVERSITY_LAMBDA"]; 1.0 = nearest first, today's panel) and its
# candidate pool, as the panel serves it (recommender.selectors.diversity.POOL_MIN).
DIVERSITY_TRADE_OFFS = (1.0, 0.95, 0.9, 0.8, 0.7, 0.5)
DIVERSITY_POOL = 24
# The variant cap (RECOMMENDER["DIVERSITY_VARIANTS_MAX"]) at the default closeness, nearest first:
# Fashion-MNIST has no variants, so what it costs here is the cost where there is nothing to gain.
DIVERSITY_CAPS = (2, 1)


def standardised(train, *others):
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(np.asarray(train, np.float32))
    return [scaler.transform(np.asarray(o, np.float32)).astype(np.float32) for o in others]


def imbalanced_rows(labels: np.ndarray) -> np.ndarray:
    """Rows of the training set with each cut class reduced to its first 10%."""
    keep = np.ones(len(labels), dtype=bool)
    for c in CUT_CLASSES:
        rows = np.flatnonzero(labels == c)
        keep[rows[int(round(len(rows) * CUT_KEEP)):]] = False
    return np.flatnonzero(keep)


def diversity_measured(*, e_index, e_query, p_index, index_lab, query_lab, plain_p6) -> tuple[dict, dict]:
    """MMR at each trade-off and the variant cap on our head's embeddings: (results by setting, table)."""
    from recommender.diversity import CLOSENESS, rerank_metrics

    started = time.perf_counter()
    found = rerank_metrics(query_vectors=e_query, query_labels=query_lab, index_vectors=e_index,
                           index_labels=index_lab, trade_offs=DIVERSITY_TRADE_OFFS, k=6, pool=DIVERSITY_POOL,
                           spaces={"raw_pixels": p_index})
    for per_group in DIVERSITY_CAPS:
        found[f"cap {per_group}"] = rerank_metrics(
            query_vectors=e_query, query_labels=query_lab, index_vectors=e_index, index_labels=index_lab,
            trade_offs=(1.0,), k=6, pool=DIVERSITY_POOL, spaces={"raw_pixels": p_index}, per_group=per_group)[1.0]
    seconds = time.perf_counter() - started
    base = found[1.0]
    rows = []
    for trade_off, m in found.items():
        gains = [m[f"intra_list_distance_{s}"] / base[f"intra_list_distance_{s}"] - 1 for s in ("embedding", "raw_pixels")]
        name = trade_off if isinstance(trade_off, str) else f"{trade_off:.2f}"
        rows.append([name, f"{m['precision_at_6']:.4f}",
                     f"{m['precision_at_6'] - base['precision_at_6']:+.4f}",
                     f"{m['intra_list_distance_embedding']:.3f}", f"{gains[0]:+.1%}",
                     f"{m['intra_list_distance_raw_pixels']:.3f}", f"{gains[1]:+.1%}"])
        print(f"  {name}: P@6 {m['precision_at_6']:.4f}  intra-list distance: embedding "
              f"{m['intra_list_distance_embedding']:.3f} ({gains[0]:+.1%}), raw pixels "
              f"{m['intra_list_distance_raw_pixels']:.3f} ({gains[1]:+.1%})")
    # The plain panel through the re-ranker is the plain panel: the same P@6 as the table above.
    assert abs(base["precision_at_6"] - plain_p6) < 1e-9, (base["precision_at_6"], plain_p6)
    table = common.table(
        f"Diversity: our head's panels re-ranked by MMR or the variant cap from the {DIVERSITY_POOL} nearest "
        "(5,000 queries)",
        ["Re-ranking (1.00 = nearest first; 0.xx = MMR; cap N = at most N of a variant group)", "P@6",
         "P@6 change", "Intra-list distance, embedding", "Gain", "Intra-list distance, raw pixels", "Gain"], rows,
        ["Intra-list distance: mean Euclidean distance over the 15 pairs of a panel's 6 products, averaged over "
         "queries; raw pixels standardised on the training images (a space the re-ranker does not see).",
         f"cap N: nearest first, at most N of a variant group (recommender.diversity.variant_groups, "
         f"closeness {CLOSENESS} x the pool's median distance to the query); Fashion-MNIST has no variants.",
         f"Re-ranking all 5,000 queries at {len(DIVERSITY_TRADE_OFFS)} trade-offs and {len(DIVERSITY_CAPS)} caps "
         f"took {seconds:.1f} s."])
    results = {str(t): m for t, m in found.items()}
    return {"pool": DIVERSITY_POOL, "k": 6, "seconds": round(seconds, 2), "by_trade_off": results}, table


def main():
    args = common.parse_mode(extra=lambda parser: parser.add_argument(
        "--diversity-only", action="store_true", help="train our head and measure only MMR's diversity"))
    common.quiet_tensorflow()
    from recommender.backbone import BackboneSpec
    from recommender.evaluation import retrieval_metrics
    from recommender.head import HeadConfig, train_head

    from bench.original_method import train_original

    quick = args.mode == "quick"
    input_size = 32 if quick else int(os.environ.get("RECOMMENDER_INPUT_SIZE", 224))
    epochs = 6 if quick else int(os.environ.get("RECOMMENDER_EPOCHS", 32))
    spec = BackboneSpec(weights=common.weights(), input_size=input_size)
    config = HeadConfig(epochs=epochs)
    started = time.perf_counter()

    (x_train, y_train), (x_test, y_test) = common.load_fashion_mnist()
    names = np.array(common.CLASS_NAMES)
    train_img, train_lab = x_train[:N_TRAIN], names[y_train[:N_TRAIN]]
    index_img, index_lab = x_test[:N_INDEX], names[y_test[:N_INDEX]]
    query_img, query_lab = x_test[N_INDEX:N_INDEX + N_QUERY], names[y_test[N_INDEX:N_INDEX + N_QUERY]]
    print(f"Fashion-MNIST: train {len(train_img):,}, recommendation set {len(index_img):,}, "
          f"queries {len(query_img):,}; backbone {spec.identity}; head {epochs} epochs")

    f_train, info_train = common.extract_cached(spec, f"fmnist-train-0-{N_TRAIN}", train_img)
    f_index, info_index = common.extract_cached(spec, f"fmnist-test-0-{N_INDEX}", index_img)
    f_query, info_query = common.extract_cached(spec, f"fmnist-test-{N_INDEX}-{N_INDEX + N_QUERY}", query_img)
    extraction = {"train": info_train, "index": info_index, "query": info_query}

    def retrieval(index_vectors, query_vectors):
        return retrieval_metrics(query_vectors, query_lab, index_vectors, index_lab, k=6)

    rows, results = [], {}

    def record(key, label, metrics, accuracy=None, extra=None):
        results[key] = {"label": label, **metrics, "accuracy": accuracy, **(extra or {})}
        rows.append([label, metrics["precision_at_1"], metrics["precision_at_6"], metrics["map_at_6"],
                     accuracy if accuracy is not None else "n/a (no classifier)"])
        print(f"  {label}: P@1 {metrics['precision_at_1']:.4f}  P@6 {metrics['precision_at_6']:.4f}  "
              f"mAP@6 {metrics['map_at_6']:.4f}  accuracy {accuracy if accuracy is not None else 'n/a'}")

    # 1. Raw pixels, standardised on the training images.
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731
    p_index, p_query = standardised(flat(train_img), flat(index_img), flat(query_img))
    record("raw_pixels", "Raw pixels, standardised, Euclidean k-NN", retrieval(p_index, p_query))

    # 2. Raw backbone features, standardised on the training features.
    b_index, b_query = standardised(f_train, f_index, f_query)
    record("raw_features", f"Raw ResNet50 features ({spec.weights}), standardised, k-NN",
           retrieval(b_index, b_query))

    # 3. The original notebook's method as written.
    if not args.diversity_only:
        print("  training the original notebook's head...")
        original = train_original(f_train, train_lab, config)
        o_index, o_query = original.search_space(f_index, f_query)
        o_accuracy = float(np.mean(np.asarray(original.predict(f_query)) == query_lab))
        record("original", "Original notebook, as written", retrieval(o_index, o_query), o_accuracy,
               {"training_seconds": round(original.seconds, 1)})

    # 4. Our pipeline.
    print("  training our head...")
    ours = train_head(f_train, train_lab, config)
    e_index, e_query = ours.head.embed(f_index), ours.head.embed(f_query)
    accuracy = float(np.mean(np.asarray(ours.head.predict(f_query)) == query_lab))
    val_accuracy = ours.history.get("val_accuracy", [None])[-1]
    record("ours", "Our pipeline (recommender.head)", retrieval(e_index, e_query), accuracy,
           {"training_seconds": round(ours.seconds, 1), "val_accuracy": val_accuracy})
    diversity, diversity_table = diversity_measured(e_index=e_index, e_query=e_query, p_index=p_index,
                                                    index_lab=index_lab, query_lab=query_lab,
                                                    plain_p6=results["ours"]["precision_at_6"])
    common.print_table(diversity_table)
    if args.diversity_only:
        common.write_result("quality_diversity", {
            "mode": args.mode, "weights": spec.weights, "random_weights": spec.is_random, "backbone": spec.identity,
            "input_size": input_size, "epochs": epochs, "results": results, "diversity": diversity,
            "tables": [diversity_table], "seconds": round(time.perf_counter() - started, 1)})
        return
    # Real embeddings for the similar-items benchmark at 10,000 products.
    common.CACHE.mkdir(parents=True, exist_ok=True)
    embeddings_path = common.CACHE / f"embeddings__{spec.identity.replace(':', '_')}__{args.mode}.npz"
    np.savez(embeddings_path, vectors=np.concatenate([e_index, e_query]),
             labels=np.concatenate([index_lab, query_lab]), identity=spec.identity)

    # 5. The backbone trained end to end on the training images (the product's backbone kind).
    from bench.backbone_training import train_and_embed

    bb_train = N_TRAIN
    trained = train_and_embed(weights=spec.weights, size=BACKBONE_SIZE, epochs=BACKBONE_EPOCHS,
                              train_img=train_img[:bb_train], train_lab=train_lab[:bb_train], index_img=index_img,
                              query_img=query_img, query_lab=query_lab)
    record("trained_backbone", f"Backbone trained end to end ({spec.weights} start, {bb_train:,} images, "
           f"{trained['epochs_run']} epochs, {BACKBONE_SIZE}px)", retrieval(trained.pop("index"), trained.pop("query")),
           trained.pop("accuracy"), trained)

    # 6. Imbalanced training set, with and without class weights.
    y_codes = y_train[:N_TRAIN]
    keep = imbalanced_rows(y_codes)
    cut_names = set(names[CUT_CLASSES])
    imbalance_rows, imbalance = [], {}
    for weighted in (False, True):
        label = "with class weights" if weighted else "without class weights"
        print(f"  training on the imbalanced set {label}...")
        cfg = HeadConfig(epochs=epochs, class_weights=weighted)
        result = train_head(f_train[keep], train_lab[keep], cfg)
        predicted = np.asarray(result.head.predict(f_query))
        metrics = retrieval(result.head.embed(f_index), result.head.embed(f_query))
        recall = {c: float(np.mean(predicted[query_lab == c] == c)) for c in names}
        cut_recall = float(np.mean([recall[c] for c in cut_names]))
        entry = {"accuracy": float(np.mean(predicted == query_lab)),
                 "balanced_accuracy": float(np.mean(list(recall.values()))),
                 "cut_classes_recall": cut_recall, **metrics, "recall_per_class": recall,
                 "class_weight": result.class_weight}
        imbalance["weighted" if weighted else "unweighted"] = entry
        imbalance_rows.append([f"Our pipeline, {label}", entry["accuracy"], entry["balanced_accuracy"],
                               cut_recall, metrics["precision_at_1"], metrics["precision_at_6"],
                               metrics["map_at_6"]])
        print(f"    accuracy {entry['accuracy']:.4f}, recall of cut classes {cut_recall:.4f}")

    weights_note = (f"Backbone weights: **{spec.weights}** ({common.weights_reason()}"
                    + ("; with RECOMMENDER_BACKBONE_WEIGHTS=imagenet, where they can be had, the same script "
                       "measures the real thing" if spec.is_random else "")
                    + f"); input size {input_size}px; head trained {epochs} epochs.")
    tables = [
        common.table(
            "Same-category retrieval, Fashion-MNIST (5,000 queries against 5,000 recommendations)",
            ["Method", "P@1", "P@6", "mAP@6", "Head accuracy"], rows,
            [weights_note,
             "Training set: first 15,000 training images, 20% (stratified) held out for validation; "
             "accuracy is measured on the 5,000 query images.",
             "Original notebook = same head, split, epochs and seed as ours, with its three bugs: "
             "raw features at inference, class weights ignored, embedding scaler refitted on the "
             "searched set."]),
        common.table(
            f"Imbalanced training set ({', '.join(names[CUT_CLASSES])} cut to 10%: "
            f"{len(keep):,} of {N_TRAIN:,} images)",
            ["Training", "Accuracy", "Balanced accuracy", "Recall of cut classes", "P@1", "P@6", "mAP@6"],
            imbalance_rows,
            ["Queries and recommendation set are the balanced test images above.", weights_note]),
        diversity_table,
    ]
    for t in tables:
        common.print_table(t)

    shrunk = []
    if quick:
        shrunk = [f"input size {input_size}px instead of 224 (28x28 sources; ResNet50 at 224 runs ~15 img/s on "
                  "2 cores, so 25,000 images would take ~30 min)",
                  f"head trained {epochs} epochs instead of 32 (all methods alike)"]
    payload = {
        "mode": args.mode, "weights": spec.weights, "random_weights": spec.is_random,
        "backbone": spec.identity, "input_size": input_size, "epochs": epochs,
        "protocol": {"train": N_TRAIN, "validation_split": config.validation_split,
                     "recommendation_set": N_INDEX, "queries": N_QUERY, "k": 6,
                     "cut_classes": [str(names[c]) for c in CUT_CLASSES], "cut_keep": CUT_KEEP},
        "shrunk": shrunk, "extraction": extraction, "results": results, "imbalanced": imbalance, "diversity": diversity,
        "tables": tables, "seconds": round(time.perf_counter() - started, 1),
    }
    common.write_result("quality", payload)


if __name__ == "__main__":
    main()
