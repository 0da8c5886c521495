"""CropNet 2D/1D, the authors'-code variant, the registry, the forest baseline and `cropmap params`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cropmap.cli import app
from cropmap.errors import ConfigError, IncompatibleInputError
from cropmap.models import CropNet, CropNet1D, build_forest, build_model, count_parameters
from cropmap.models.forest import forest_predict_proba


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conv_bn_count(c_in: int, channels: list[int], k: int, first_in: int) -> int:
    """Parameters of blocks [conv k, BN, ReLU] x 2, counted by hand (weights + bias + BN scale/shift)."""
    total, prev = 0, first_in
    for c in channels:
        total += prev * c * k + c + 2 * c  # conv1 + BN
        total += c * c * k + c + 2 * c  # conv2 + BN
        prev = c
    return total


@pytest.mark.parametrize("n_bins", [43, 73])
def test_cropnet_v1_has_4_69m_parameters(n_bins):
    model = build_model("cropnet", n_bands=10, n_classes=7)
    n = count_parameters(model)
    expected = _conv_bn_count(1, [64, 128, 256, 512], 9, 1) + 512 * 7 + 7
    assert n == expected
    assert abs(n - 4.69e6) / 4.69e6 < 0.01
    assert model.eval()(torch.zeros(3, 1, 10, n_bins)).shape == (3, 7)


def test_code_variant_is_a_configuration_of_the_same_class():
    model = build_model("cropnet-code", n_bands=10, n_classes=7)
    assert type(model) is CropNet
    n = count_parameters(model)
    assert n == _conv_bn_count(1, [128] * 4, 9, 1) + 128 * 7 + 7
    assert abs(n - 1.04e6) / 1.04e6 < 0.01
    # stride 2 in block 1's first conv only, and no pooling
    strides = [m.stride for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides[0] == (2, 2) and all(s == (1, 1) for s in strides[1:])
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert drops == [0.2, 0.3, 0.3, 0.4]


def test_cropnet1d_uses_bands_as_channels():
    model = build_model("cropnet1d", n_bands=10, n_classes=5)
    assert isinstance(model, CropNet1D)
    assert count_parameters(model) == _conv_bn_count(10, [64, 128, 256, 512], 3, 10) + 512 * 5 + 5


@pytest.mark.parametrize("name", ["cropnet", "cropnet-code", "cropnet1d"])
@pytest.mark.parametrize("n_bins", [8, 21, 43, 73])
def test_any_time_length_from_8_works(name, n_bins):
    model = build_model(name, n_bands=4, n_classes=3, channels=[8, 8, 8, 8]).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 4, n_bins))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_wrong_inputs_raise_clear_errors():
    model = build_model("cropnet", n_bands=10, n_classes=3, channels=[8, 8, 8, 8]).eval()
    with pytest.raises(IncompatibleInputError, match="10 bands"):
        model(torch.zeros(2, 1, 9, 43))
    with pytest.raises(IncompatibleInputError, match=">= 8 time bins"):
        model(torch.zeros(2, 1, 10, 7))
    with pytest.raises(IncompatibleInputError, match="CropNet1D"):
        build_model("cropnet1d", n_bands=10, n_classes=3)(torch.zeros(2, 1, 10, 43))
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("resnet", n_bands=10, n_classes=3)
    with pytest.raises(ConfigError, match="dropout"):
        build_model("cropnet", n_bands=10, n_classes=3, dropout=[0.1, 0.2])


def test_forest_probabilities_cover_classes_unseen_in_training():
    x = np.random.default_rng(0).normal(size=(40, 5))
    y = np.repeat([0, 2], 20)  # class 1 absent
    forest = build_forest(n_estimators=10, seed=0).fit(x, y)
    proba = forest_predict_proba(forest, x, 3)
    assert proba.shape == (40, 3) and np.allclose(proba.sum(1), 1) and (proba[:, 1] == 0).all()
    assert forest.get_params()["class_weight"] == "balanced"
    assert build_forest().get_params()["n_estimators"] == 500


def test_cli_params_prints_counts():
    result = CliRunner().invoke(app, ["params", "--n-bins", "43"])
    assert result.exit_code == 0, result.output
    assert "4,691,655" in result.output and "(4.69M)" in result.output
    assert "1,037,319" in result.output
