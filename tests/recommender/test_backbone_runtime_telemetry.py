"""recommender.backbone.openvino_telemetry_off: converting the backbone for OpenVINO sends nothing
out and forks nothing (openvino-telemetry forked 25 copies of the converting process, one per
Google Analytics event, when the machine's user had not declined it in ~/intel)."""

import multiprocessing.popen_fork
import sys


def test_converting_a_model_for_openvino_forks_nothing_and_reports_nothing(monkeypatch):
    import keras
    import numpy as np

    from recommender.backbone import openvino_telemetry_off

    forks = []
    monkeypatch.setattr(multiprocessing.popen_fork.Popen, "_launch", lambda self, process: forks.append(process))
    openvino_telemetry_off()
    import openvino as ov

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    compiled = ov.Core().compile_model(ov.convert_model(model, example_input=np.ones((1, 4), np.float32)), "CPU")
    assert compiled(np.ones((1, 4), dtype=np.float32))[0].shape == (1, 2)
    assert forks == []
    assert sys.modules["openvino.tools.ovc.convert_impl"].tm.__name__ == "openvino.tools.ovc.telemetry_stub"
