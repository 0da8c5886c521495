"""CropNet 2D/1D, the authors'-code variant, the deeper baselines (ResNet-50-like, EfficientNetV2-S-like),
the registry, the forest baseline and `cropmap params`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cropmap.cli import app
from cropmap.errors import ConfigError, IncompatibleInputError
from cropmap.ml.models import (
    CropNet,
    CropNet1D,
    build_forest,
    build_model,
    count_parameters,
)
from cropmap.ml.models.efficientnet import FusedMBConv, MBConv
from cropmap.ml.models.forest import forest_predict_proba
from cropmap.ml.models.resnet import Bottleneck

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


def _resnet50_count(n_classes: int) -> int:
    """ResNet-50 with a 3x3 1-channel stem, counted by hand: bias-free convs, BN scale/shift, linear head."""
    def bn(c: int) -> int:
        return 2 * c

    total, c = 9 * 64 + bn(64), 64
    for n, w in zip((3, 4, 6, 3), (64, 128, 256, 512)):
        for i in range(n):
            total += c * w + bn(w) + 9 * w * w + bn(w) + w * 4 * w + bn(4 * w)
            if i == 0:  # projection shortcut (channels change in every stage's first block)
                total += c * 4 * w + bn(4 * w)
            c = 4 * w
    return total + c * n_classes + n_classes


def _effnetv2_s_count(n_classes: int) -> int:
    """EfficientNetV2-S with a 1-channel stem, counted by hand from the paper's table 4."""
    def bn(c: int) -> int:
        return 2 * c

    total, c = 9 * 24 + bn(24), 24
    for kind, e, out, n in (("f", 1, 24, 2), ("f", 4, 48, 4), ("f", 4, 64, 4),
                            ("m", 4, 128, 6), ("m", 6, 160, 9), ("m", 6, 256, 15)):
        for _ in range(n):
            mid = c * e
            if kind == "f":
                total += (9 * c * out + bn(out)) if e == 1 else (9 * c * mid + bn(mid) + mid * out + bn(out))
            else:
                sq = c // 4  # squeeze-and-excitation on the block's input width
                total += c * mid + bn(mid) + 9 * mid + bn(mid) + (mid * sq + sq) + (sq * mid + mid) + mid * out + bn(out)
            c = out
    return total + c * 1280 + bn(1280) + 1280 * n_classes + n_classes


def test_deeper_baselines_have_the_seed_parameter_counts():
    resnet = build_model("resnet50", n_bands=10, n_classes=7)
    effnet = build_model("effnetv2-s", n_bands=10, n_classes=7)
    assert count_parameters(resnet) == _resnet50_count(7)
    assert count_parameters(effnet) == _effnetv2_s_count(7)
    assert abs(count_parameters(resnet) - 23.5e6) / 23.5e6 < 0.05
    assert abs(count_parameters(effnet) - 20.2e6) / 20.2e6 < 0.10
    assert sum(isinstance(m, Bottleneck) for m in resnet.modules()) == 16  # 3-4-6-3
    assert sum(isinstance(m, FusedMBConv) for m in effnet.modules()) == 10
    assert sum(isinstance(m, MBConv) for m in effnet.modules()) == 30


@pytest.mark.parametrize("name", ["resnet50", "effnetv2-s"])
@pytest.mark.parametrize("n_bins", [8, 13, 25, 73])
def test_deeper_baselines_take_the_cropnet_input_and_learn(name, n_bins):
    small = ({"blocks": [1, 1, 1, 1], "widths": [4, 4, 4, 4]} if name == "resnet50" else
             {"stages": [["fused", 1, 3, 1, 8, 1], ["fused", 4, 3, 2, 8, 2], ["mb", 4, 3, 2, 16, 2]],
              "stem_channels": 8, "head_channels": 32})
    torch.manual_seed(0)
    model = build_model(name, n_bands=10, n_classes=3, **small)
    x, y = torch.randn(12, 1, 10, n_bins), torch.arange(12) % 3
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(15):  # a few steps on 12 samples: the loss must fall (gradients reach the stem)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        assert model(x[:, 0]).shape == (12, 3)  # (N, band, time) is accepted like CropNet's
    with pytest.raises(IncompatibleInputError, match="10 bands"):
        model(torch.zeros(2, 1, 9, n_bins))
    with pytest.raises(IncompatibleInputError, match=">= 8 time bins"):
        model(torch.zeros(2, 1, 10, 7))


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
    assert f"{_resnet50_count(7):,d}" in result.output and f"{_effnetv2_s_count(7):,d}" in result.output
