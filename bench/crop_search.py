"""Benchmark 10: search by photo with a crop (issue 17): does the shopper's box lift P@6 when the
product sits inside a larger picture?

The set, for each of three catalogs that look nothing alike (Fashion-MNIST, and bench/catalogs.py's
colour product photos and line drawings):

- a catalog of N images with their categories (Fashion-MNIST: training images; the others: seed 0);
- Q held-out images of the same categories, never in the catalog and never identical to a catalog
  image (Fashion-MNIST: test images; the others: seed 1), each pasted whole (its own rectangle,
  background included: a product photo inside a larger picture) onto a 320x240 scene at a random
  position, its side 25-50% of the scene's shorter side. The scene's background is a recoloured
  texture (bench/catalogs.py's recoloured crops, stretched to the scene) under three distractor
  objects of the *other* catalogs, 15-30% of the side each, placed before the product (so it may
  cover them, never the reverse).

Each query is searched four ways, with the product's crop (catalog.cropping.picture_crop, the box as
fractions of the picture, as the page and the API take it): the whole scene; a loosened box, each
edge moved out or in by up to 10% of the box's side (uniform, independently: a shopper's drawing);
the true box; and, as the ceiling, the held-out image alone. P@6 (and P@1) = the share of the 6
nearest catalog images of the query's category, with the two embeddings the product serves: the
backbone's features standardised on the catalog (the cold start) and a head trained on the catalog's
categories (recommender.head, what an active version embeds with).

    python bench/crop_search.py [--quick | --full]

--quick (make bench): 1,000 catalog images and 300 queries per catalog at 64 px (73 s on 2 cores);
--full: 3,000 and 1,000 at 224 px, the product's input size (28 min on 2 cores). Prints the table and writes
bench/results/crop_search.json (``results[catalog][embedding][variant]`` = {precision_at_1,
precision_at_6, map_at_6, queries}, with ``lift_true_box`` and ``lift_loosened_box`` in P@6 over
the whole picture).
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench import catalogs, common  # noqa: E402
from catalog.cropping import box_from_values, picture_crop  # noqa: E402

SIZES = {"quick": (1000, 300), "full": (3000, 1000)}  # catalog images, queries per catalog
INPUT_SIZES = {"quick": 64, "full": 224}
SOURCES = ("fashion_mnist", "colour_objects", "line_drawings")
SCENE = (320, 240)
PRODUCT_SIDE = (0.25, 0.50)  # of the scene's shorter side
DISTRACTORS, DISTRACTOR_SIDE = 3, (0.15, 0.30)
LOOSEN = 0.10  # each edge moved by up to this share of the box's side, out or in
VARIANTS = {"whole": "whole picture", "loosened_box": "loosened box (+-10%)", "true_box": "true box",
            "alone": "held-out image alone"}
HEAD_EPOCHS = 12


# --------------------------------------------------------------------------- pictures

@functools.cache
def _fashion_mnist():
    return common.load_fashion_mnist()  # read once: every catalog's scenes take distractors from it


def pictures(name: str, n: int, *, held_out: bool, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """``n`` pictures of a catalog and their categories: the catalog's own, or held-out ones."""
    if name == "fashion_mnist":
        (x_train, y_train), (x_test, y_test) = _fashion_mnist()
        x, y = (x_test, y_test) if held_out else (x_train, y_train)
        index = np.random.default_rng(seed).permutation(len(x))[:n]
        return common.to_pictures(x[index]), [common.CLASS_NAMES[int(y[i])] for i in index]
    files, labels = catalogs.generate(name, n, seed=seed + (1 if held_out else 0))
    return [catalogs.decode(f).convert("RGB") for f in files], labels


def _pasted(scene: Image.Image, picture: Image.Image, share: float, rng) -> tuple[int, int, int, int]:
    """``picture`` pasted whole at a random place, its longer side ``share`` of the scene's shorter."""
    longest = max(8, round(share * min(scene.size)))
    scale = longest / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    left = int(rng.integers(0, scene.width - size[0] + 1))
    top = int(rng.integers(0, scene.height - size[1] + 1))
    scene.paste(picture.convert("RGB").resize(size, Image.Resampling.BICUBIC), (left, top))
    return left, top, left + size[0], top + size[1]


def scene_of(product: Image.Image, *, texture: Image.Image, distractors, rng) -> tuple[Image.Image, tuple]:
    """The product inside a larger picture, and its true box in pixels (left, top, right, bottom)."""
    scene = texture.convert("RGB").resize(SCENE, Image.Resampling.BILINEAR)
    for other in distractors:
        _pasted(scene, other, rng.uniform(*DISTRACTOR_SIDE), rng)
    return scene, _pasted(scene, product, rng.uniform(*PRODUCT_SIDE), rng)


def loosened(box: tuple, size: tuple[int, int], rng) -> tuple:
    """A shopper's drawing of ``box``: each edge moved by up to LOOSEN of the box's side, clipped."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    moves = rng.uniform(-LOOSEN, LOOSEN, size=4)
    return (max(0, round(left - moves[0] * w)), max(0, round(top - moves[1] * h)),
            min(size[0], round(right + moves[2] * w)), min(size[1], round(bottom + moves[3] * h)))


def cropped(scene: Image.Image, box: tuple) -> Image.Image:
    """The product's crop: the box as fractions of the picture (what the page and the API take)."""
    (left, top, right, bottom), (width, height) = box, scene.size
    fractions = box_from_values(x=left / width, y=top / height, width=(right - left) / width,
                                height=(bottom - top) / height)
    return picture_crop(scene, box=fractions)


def query_set(name: str, n: int, log) -> dict:
    """Held-out images of ``name`` in scenes: {variant: pictures}, their labels, and scene samples."""
    products, labels = pictures(name, n, held_out=True, seed=1)
    others = [pictures(other, 200, held_out=True, seed=3)[0] for other in SOURCES if other != name]
    pool = [p for group in others for p in group]
    textures = [catalogs.decode(f) for f in catalogs.generate("recoloured_crops", n, seed=4)[0]]
    rng = np.random.default_rng(SOURCES.index(name) + 10)  # seeded: the same scenes every run
    out = {variant: [] for variant in VARIANTS}
    for product, texture in zip(products, textures):
        chosen = [pool[int(i)] for i in rng.choice(len(pool), size=DISTRACTORS, replace=False)]
        scene, box = scene_of(product, texture=texture, distractors=chosen, rng=rng)
        out["whole"].append(scene)
        out["loosened_box"].append(cropped(scene, loosened(box, scene.size, rng)))
        out["true_box"].append(cropped(scene, box))
        out["alone"].append(product)
    log(f"  {name}: {len(products)} scenes, product side {PRODUCT_SIDE[0]:.0%}-{PRODUCT_SIDE[1]:.0%} of "
        f"{min(SCENE)} px, {DISTRACTORS} distractors each")
    return {"pictures": out, "labels": labels}


# --------------------------------------------------------------------------- measuring

def features_of(spec, images) -> np.ndarray:
    from recommender.backbone import get_backbone

    return get_backbone(spec, batch_size=64).extract(images)


def measure(name: str, sizes: tuple[int, int], spec, log) -> dict:
    """P@6 of each variant with both embeddings, for one catalog."""
    from sklearn.preprocessing import StandardScaler

    from recommender.evaluation import retrieval_metrics
    from recommender.head import HeadConfig, train_head

    n_catalog, n_queries = sizes
    catalog, catalog_labels = pictures(name, n_catalog, held_out=False)
    queries = query_set(name, n_queries, log)
    started = time.perf_counter()
    catalog_features = features_of(spec, catalog)
    query_features = {v: features_of(spec, pics) for v, pics in queries["pictures"].items()}
    log(f"  {name}: {n_catalog + len(VARIANTS) * n_queries:,} images extracted in "
        f"{time.perf_counter() - started:.0f} s")
    scaler = StandardScaler().fit(catalog_features)
    head = train_head(catalog_features, catalog_labels,
                      HeadConfig(epochs=HEAD_EPOCHS, validation_split=0.0)).head
    embeddings = {
        "backbone features, standardised": (scaler.transform, scaler.transform(catalog_features)),
        "trained head": (head.embed, head.embed(catalog_features)),
    }
    out = {}
    for label, (embed, index) in embeddings.items():
        out[label] = {v: retrieval_metrics(embed(f), queries["labels"], index, catalog_labels, k=6)
                      for v, f in query_features.items()}
        whole = out[label]["whole"]["precision_at_6"]
        out[label]["lift_true_box"] = out[label]["true_box"]["precision_at_6"] - whole
        out[label]["lift_loosened_box"] = out[label]["loosened_box"]["precision_at_6"] - whole
    # A random ranking's P@6: the share of the catalog in each query's category, averaged.
    shares = {c: float(np.mean(np.asarray(catalog_labels) == c)) for c in set(catalog_labels)}
    out["chance"] = float(np.mean([shares.get(label, 0.0) for label in queries["labels"]]))
    out["categories"] = len(set(catalog_labels))
    return out


def main(argv=None) -> int:
    args = common.parse_mode(argv)
    common.quiet_tensorflow()
    from recommender.backbone import BackboneSpec

    sizes, input_size = SIZES[args.mode], INPUT_SIZES[args.mode]
    spec = BackboneSpec(weights=common.weights(), input_size=input_size)
    started = time.perf_counter()
    print(f"Crop search: {sizes[0]:,} catalog images and {sizes[1]:,} scenes per catalog; backbone {spec.identity}")
    results, rows = {}, []
    for name in SOURCES:
        results[name] = measure(name, sizes, spec, print)
        for label in ("backbone features, standardised", "trained head"):
            r = results[name][label]
            rows.append([name, label, *(round(r[v]["precision_at_6"], 4) for v in VARIANTS),
                         round(r["lift_true_box"], 4), round(r["lift_loosened_box"], 4),
                         round(results[name]["chance"], 4)])
    table = common.table(
        "Search by photo with a crop: P@6 (same category) of a product inside a larger picture",
        ["catalog", "embedding", *VARIANTS.values(), "lift, true box", "lift, loosened box", "chance"], rows,
        [f"per catalog: {sizes[0]:,} catalog images, {sizes[1]:,} held-out images (same categories, never the "
         f"identical image) each pasted whole onto a {SCENE[0]}x{SCENE[1]} scene (side {PRODUCT_SIDE[0]:.0%}-"
         f"{PRODUCT_SIDE[1]:.0%} of {min(SCENE)} px, a random place) over a recoloured texture and "
         f"{DISTRACTORS} objects of the other catalogs",
         "boxes cut with the product's crop (catalog.cropping.picture_crop); loosened: each edge moved by up to "
         f"{LOOSEN:.0%} of the box's side, out or in; lift = P@6 of the box minus the whole picture's",
         f"backbone {spec.identity} at {input_size} px (weights {spec.weights}: {common.weights_reason()}); "
         f"head trained {HEAD_EPOCHS} epochs on the catalog's categories"])
    common.print_table(table)
    common.write_result("crop_search", {
        "mode": args.mode, "input_size": input_size, "backbone": spec.identity,
        "protocol": {"catalog": sizes[0], "queries": sizes[1], "scene": list(SCENE), "product_side": list(PRODUCT_SIDE),
                     "distractors": DISTRACTORS, "distractor_side": list(DISTRACTOR_SIDE), "loosen": LOOSEN,
                     "head_epochs": HEAD_EPOCHS, "k": 6, "sources": list(SOURCES), "variants": VARIANTS},
        "results": results, "tables": [table], "seconds": round(time.perf_counter() - started, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
