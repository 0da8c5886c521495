"""AdaBN (cropmap.ml.adabn): only the BatchNorm running statistics change, to the per-channel mean and
variance of each layer's inputs on the target, computed here independently in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cropmap.errors import InvalidInputError
from cropmap.ml.adabn import adapt_batchnorm, adapt_checkpoint, batchnorm_layers
from cropmap.ml.checkpoint import load_checkpoint
from cropmap.ml.models import build_model
from cropmap.samples.victoria import read_victoria


@pytest.fixture()
def net():
    torch.manual_seed(0)
    model = build_model("cropnet", n_bands=3, n_classes=4, channels=(4, 6), pool_after=(0,), first_stride=2,
                        dropout=0.0)
    # source statistics that are not the defaults, so that "unchanged" is a real check
    for bn in batchnorm_layers(model):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return model.eval()


def _target(n: int = 37) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.normal(0.7, 1.6, (n, 3, 16))).astype(np.float32)  # (N, band, time): shifted and wider


def _conv2d_numpy(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """(N, C_in, H, W) * (C_out, C_in, 3, 3), padding 1: (N, C_out, H', W') in float64."""
    n, _, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    out = np.zeros((n, w.shape[0], ho, wo))
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]  # (N, C_in, H', W')
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.float64))
    return out + b[None, :, None, None]


def test_first_layer_gets_the_numpy_mean_and_variance_of_its_inputs(net):
    x = _target()
    adapted = adapt_batchnorm(net, x, batch_size=8)
    conv = net.features[0]
    z = _conv2d_numpy(x[:, None], conv.weight.detach().numpy(), conv.bias.detach().numpy(), stride=2)
    bn = batchnorm_layers(adapted)[0]
    np.testing.assert_allclose(bn.running_mean.numpy(), z.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    # the population variance (what eval-mode BatchNorm divides by), not the unbiased one
    np.testing.assert_allclose(bn.running_var.numpy(), z.var((0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_every_layer_holds_the_statistics_the_adapted_network_feeds_it(net):
    """Layer k's inputs in the ADAPTED network (eval mode, earlier layers adapted): a single train-mode
    pass, which normalises the earlier layers by batch statistics, would not match."""
    x = _target()
    adapted = adapt_batchnorm(net, x, batch_size=5)
    seen = {}
    hooks = [bn.register_forward_pre_hook(lambda m, inp, k=k: seen.__setitem__(k, inp[0].detach().double().numpy()))
             for k, bn in enumerate(batchnorm_layers(adapted))]
    with torch.no_grad():
        adapted(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    for k, bn in enumerate(batchnorm_layers(adapted)):
        np.testing.assert_allclose(bn.running_mean.numpy(), seen[k].mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.running_var.numpy(), seen[k].var((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_only_running_statistics_change_and_the_source_is_untouched(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    adapted = adapt_batchnorm(net, _target())
    after = adapted.state_dict()
    for key, value in before.items():
        assert torch.equal(net.state_dict()[key], value), f"source model changed at {key}"
        if key.endswith(("running_mean", "running_var")):
            assert not torch.allclose(after[key], value), f"{key} not re-estimated"
        else:
            assert torch.equal(after[key], value), f"{key} changed"
    assert not adapted.training
    # batch size changes nothing but rounding
    again = adapt_batchnorm(net, _target(), batch_size=3).state_dict()
    for key in after:
        torch.testing.assert_close(again[key], after[key], rtol=1e-5, atol=1e-6)


def test_rows_with_no_data_are_left_out_and_an_empty_target_refused(net):
    x = _target()
    holed = np.concatenate([x, np.full((2, 3, 16), np.nan, np.float32)])
    a, b = adapt_batchnorm(net, x).state_dict(), adapt_batchnorm(net, holed).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    with pytest.raises(InvalidInputError):
        adapt_batchnorm(net, holed[-2:])


def test_adapted_checkpoint_is_a_new_one_on_real_series(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    target = read_victoria("test")["reflectance"].values.transpose(0, 2, 1) * 1.3  # brighter target
    source_state = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    adapted = adapt_checkpoint(ckpt, target, max_pixels=200)
    assert adapted is not ckpt and adapted.model is not ckpt.model
    assert adapted.class_names == ckpt.class_names and adapted.normalisation == ckpt.normalisation
    for key, value in ckpt.model.state_dict().items():
        assert torch.equal(value, source_state[key])
    first = batchnorm_layers(adapted.model)[0]
    assert not torch.allclose(first.running_mean, batchnorm_layers(ckpt.model)[0].running_mean)
    p_src, p_ada = ckpt.predict_proba(target, device="cpu"), adapted.predict_proba(target, device="cpu")
    assert p_ada.shape == p_src.shape and np.isfinite(p_ada).all() and not np.allclose(p_ada, p_src)
