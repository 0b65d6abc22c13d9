"""bench/diversity.py's catalogs and panel measures: the figures it reports mean what they say."""

import numpy as np

from bench import catalogs, diversity


def test_families_are_seeded_near_identical_and_share_their_category():
    first = diversity.family_catalog("colour_objects", 6, seed=3)
    again = diversity.family_catalog("colour_objects", 6, seed=3)
    assert first["files"] == again["files"]  # deterministic, byte for byte
    sizes = first["family_size"][np.unique(first["family"], return_index=True)[1]]
    assert sorted(sizes.tolist()) == [1, 1, 3, 3, 6, 6]
    assert len(first["files"]) == sizes.sum()
    for f in np.unique(first["family"]):
        members = np.flatnonzero(first["family"] == f)
        assert len(set(first["labels"][members])) == 1
        assert len({first["files"][i] for i in members}) == len(members)  # each variant a file of its own
    pixels = diversity.pixel_vectors(first["files"])
    family = first["family"]
    d = np.linalg.norm(pixels[:, None] - pixels[None, :], axis=2)
    same = (family[:, None] == family[None, :]) & ~np.eye(len(family), dtype=bool)
    assert d[same].max() < np.median(d[family[:, None] != family[None, :]])  # variants: nearer than others


def test_grey_drawings_stay_grey_png():
    c = diversity.family_catalog("line_drawings", 3, seed=1)
    assert all(catalogs.extension(f) == "png" and catalogs.decode(f).mode == "L" for f in c["files"])


def test_panel_metrics_count_families_and_mmr_and_the_cap_break_a_crowd():
    rng = np.random.default_rng(0)
    crowd = np.array([1.0, 0.0]) + rng.normal(0, 0.01, (6, 2))  # six variants of one product, near the query
    others = np.array([[0.0, 1.2], [0.0, -1.2], [-1.2, 0.0], [1.5, 1.5], [1.5, -1.5], [-1.5, 1.5]])
    index = np.concatenate([crowd, others])
    family = np.array([0] * 6 + [1, 2, 3, 4, 5, 6])
    labels = np.array(["a"] * 6 + ["a", "b", "b", "a", "b", "b"])
    m = diversity.panel_metrics(query_vectors=[[0.0, 0.0]], query_labels=["a"], index_vectors=index,
                                index_labels=labels, index_family=family, pool=12,
                                settings=((1.0, 0, 0.0), (0.5, 0, 0.0), (1.0, 2, 0.6)))
    plain, mixed, capped = (m["by_setting"][name] for name in ("1.00", "0.50", "cap 2 @0.6"))
    assert (plain["distinct_families"], plain["crowded_share"], plain["precision_at_6"]) == (1, 1.0, 1.0)
    assert mixed["distinct_families"] == 6 and mixed["crowded_share"] == 0.0
    # A sibling of a family already shown counts for P@6, not as another relevant product.
    assert plain["relevant_families"] == 1 and mixed["relevant_families"] > 1
    assert mixed["intra_list_distance_embedding"] > plain["intra_list_distance_embedding"]
    assert m["pool_crowded_share"] == 1.0
    assert capped["distinct_families"] == 5 and capped["crowded_share"] == 0.0  # two variants, four others


def test_a_tiny_catalog_end_to_end_and_the_overall_weighs_each_query():
    parts = [diversity.measure_source(name, 12, 10, diversity.pixel_embedder, log=lambda *a: None)
             for name in ("colour_objects", "recoloured_crops")]
    for r in parts:
        assert r["products"] == 40 and r["families"] == {"1": 4, "3": 4, "6": 4}
        for view in ("held_out", "product_pages"):
            assert list(r[view]["by_setting"]) == [diversity.setting_label(s) for s in diversity.SETTINGS]
            for t, m in r[view]["by_setting"].items():
                assert 1 <= m["distinct_families"] <= 6 and 0 <= m["precision_at_6"] <= 1
    overall = diversity.combined([r["held_out"] for r in parts])
    p6 = [r["held_out"]["by_setting"]["cap 2 @0.6"]["precision_at_6"] for r in parts]
    assert overall["queries"] == 20 and np.isclose(overall["by_setting"]["cap 2 @0.6"]["precision_at_6"], np.mean(p6))
    tables = diversity.tables_for(parts, {"held_out": overall, "product_pages": diversity.combined(
        [r["product_pages"] for r in parts])}, spec=type("Spec", (), {"identity": "pixels"})(), epochs=0)
    assert len(tables) == 1 + len(parts) + 2
