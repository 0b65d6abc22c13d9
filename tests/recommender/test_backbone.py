"""Pure ML: no Django needed (the module must not import it)."""


import numpy as np
import pytest
from PIL import Image

from recommender.backbone import Backbone, BackboneSpec, BackboneWeightsError, build_resnet50


def pictures(n, seed=0, mode="L"):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").convert(mode) for _ in range(n)]


def test_module_has_no_django_import():
    import recommender.backbone as backbone_module
    import recommender.evaluation
    import recommender.head

    for module in (backbone_module, recommender.head, recommender.evaluation):
        source = open(module.__file__).read()
        assert "django" not in source.replace("Django", "")


def test_features_shape_dtype_and_determinism_under_random_weights():
    spec = BackboneSpec(weights="random", input_size=32, seed=7)
    a = Backbone(spec, batch_size=4).extract(pictures(5))
    b = Backbone(spec, batch_size=2).extract(pictures(5))
    assert a.shape == (5, 2048) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # same seed, any batch size
    assert np.isfinite(a).all() and a.std() > 0


def test_grayscale_and_rgb_of_the_same_picture_give_the_same_features():
    backbone = Backbone(BackboneSpec(weights="random", input_size=32), batch_size=8)
    gray = pictures(3)
    rgb = [p.convert("RGB") for p in gray]
    np.testing.assert_allclose(backbone.extract(gray), backbone.extract(rgb), rtol=1e-5, atol=1e-5)


def test_batched_equals_one_at_a_time():
    backbone = Backbone(BackboneSpec(weights="random", input_size=32), batch_size=8)
    images = pictures(4, seed=3)
    np.testing.assert_allclose(backbone.extract(images), backbone.extract_one_at_a_time(images), rtol=1e-3, atol=1e-4)


def test_a_short_batch_is_not_padded_and_traces_nothing_new():
    """A lone upload used to be padded to the full batch of 32 (31 blank images extracted for
    nothing); the graph traced at load time takes any batch size."""
    backbone = Backbone(BackboneSpec(weights="random", input_size=32), batch_size=8, runtime="keras")
    function = backbone.model.predict_function
    shapes = []
    original = backbone._infer
    backbone._infer = lambda x: shapes.append(x.shape[0]) or original(x)
    full = backbone.extract(pictures(11, seed=5))
    assert shapes == [8, 3]
    assert backbone.model.predict_function is function  # the same compiled function, no new one
    one = backbone.extract(pictures(11, seed=5)[-1:])
    np.testing.assert_allclose(one[0], full[-1], rtol=1e-4, atol=1e-5)
    assert shapes[-1] == 1


def test_on_a_cpu_inference_runs_on_openvino_with_the_features_of_keras():
    """The Keras model stays the source of truth: OpenVINO runs a conversion of it, in fp32, and
    gives the same features (any batch size, a lone image too)."""
    spec = BackboneSpec(weights="random", input_size=32, seed=3)
    openvino = Backbone(spec, batch_size=4, runtime="auto")
    keras = Backbone(spec, batch_size=4, runtime="keras")
    assert openvino.runtime.startswith("openvino ") and openvino.runtime.endswith(" fp32")
    assert keras.runtime == "keras"
    images = pictures(6, seed=4, mode="RGB")
    np.testing.assert_allclose(openvino.extract(images), keras.extract(images), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(openvino.extract(images[:1]), keras.extract(images[:1]), rtol=1e-4, atol=1e-4)


def test_a_conversion_that_disagrees_with_keras_is_not_used(monkeypatch, caplog):
    import recommender.backbone as backbone_module

    monkeypatch.setattr(backbone_module, "RUNTIME_TOLERANCE", -1.0)  # any difference is too much
    backbone = Backbone(BackboneSpec(weights="random", input_size=32), batch_size=4, runtime="openvino")
    assert backbone.runtime == "keras"
    assert any("Keras, not OpenVINO (RuntimeError: its features differ from Keras' by" in r.getMessage()
               and r.levelname == "WARNING" for r in caplog.records)
    assert backbone.extract(pictures(2)).shape == (2, 2048)


def test_an_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="backbone runtime must be one of auto, openvino, keras, not 'onnx'"):
        Backbone(BackboneSpec(weights="random", input_size=32), runtime="onnx")


def test_identity_records_architecture_weights_and_size(tmp_path):
    assert BackboneSpec(weights="random", input_size=64, seed=3).identity == "resnet50:random-seed3:64"
    assert BackboneSpec(weights="imagenet", input_size=224).identity == "resnet50:imagenet:224"
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"123")
    assert BackboneSpec(weights=str(weights)).identity.startswith("resnet50:file-")


def test_random_weights_warn_loudly():
    with pytest.warns(UserWarning, match="SEEDED RANDOM weights"):
        build_resnet50(BackboneSpec(weights="random", input_size=32))


def test_unloadable_weights_name_the_setting(tmp_path):
    with pytest.raises(BackboneWeightsError, match="RECOMMENDER_BACKBONE_WEIGHTS"):
        BackboneSpec(weights=str(tmp_path / "missing.h5")).identity
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(BackboneWeightsError, match="RECOMMENDER_BACKBONE_WEIGHTS"):
        build_resnet50(BackboneSpec(weights=str(bad), input_size=32))


def test_input_size_below_resnet_minimum_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        BackboneSpec(weights="random", input_size=28)
