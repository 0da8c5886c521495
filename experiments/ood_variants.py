"""Which out-of-distribution score picks out the misclassified pixels? Measured on the checkpoints that
``cropmap experiment configs/experiments/victoria-shifted-30ep.yaml --cache-dir DIR`` trained (CropNet 2D,
shift+warp, 30 epochs, 3 seeds), on the Victoria test split with its dates moved by -20..+20 days.

    .venv/bin/python experiments/ood_variants.py [DIR]     # DIR: that experiment's cache (default /tmp/exp-cache)

Scores (higher = less trusted), each fitted on the training split of the same seed and rated by
:func:`cropmap.ml.evaluate.error_detection`:

- ``penult-maha-lw (product)``: :func:`cropmap.ml.ood.fit_ood`: the minimum over classes of the
  Mahalanobis distance of the penultimate features (the global-average-pooled activations the linear
  head reads) to class means with one shared covariance (Lee et al. 2018), Ledoit-Wolf shrinkage;
- ``penult-maha-ridge``: the same with the plain covariance plus ``1e-3 I``;
- ``input-maha``: Mahalanobis on the normalised inputs (the score cropmap shipped before; PCA to 16
  axes plus the residual off them, probabilistic PCA);
- ``energy``: ``-logsumexp(logits)`` (Liu et al. 2020); ``1-maxprob``: one minus the top softmax probability.

Prints the mean ± std over seeds of the AUROC for errors and the OA of the 80 % most trusted pixels.
"""
import collections
import sys
from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from cropmap.ml.checkpoint import load_checkpoint
from cropmap.ml.evaluate import error_detection
from cropmap.ml.ood import fit_ood, ood_distance
from cropmap.ml.train import penultimate_features, stratified_split
from cropmap.research import runner as R
from cropmap.research.config import load_experiment
from cropmap.research.variants import variants
from cropmap.samples.sources import read_sample_set

cfg = load_experiment("configs/experiments/victoria-shifted-30ep.yaml")
bands, _ = R.resolve_bands(cfg)
cfg = cfg.model_copy(update={"bands": bands})
src, tgt = read_sample_set(cfg.source, bands=cfg.bands), read_sample_set(cfg.target, bands=cfg.bands)
prep = R._prepare(cfg, variants(cfg)[0], src, tgt)
cache = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/exp-cache")
paths = sorted(cache.glob("cropnet-shift+warp-s*.pt"))
if len(paths) != len(cfg.seeds):
    sys.exit(f"expected {len(cfg.seeds)} checkpoints cropnet-shift+warp-s*.pt in {cache}; run the experiment first")


def ridge_maha(ftr, ytr):
    classes = np.unique(ytr)
    mu = np.stack([ftr[ytr == c].mean(0) for c in classes])
    cen = ftr - mu[np.searchsorted(classes, ytr)]
    prec = np.linalg.inv(cen.T @ cen / len(cen) + 1e-3 * np.eye(cen.shape[1]))
    return lambda f: np.stack([np.einsum("ij,jk,ik->i", f - m, prec, f - m) for m in mu], 1).min(1)


def input_maha(ztr, k=16):
    x = ztr.reshape(len(ztr), -1).astype(np.float64)
    mean = x.mean(0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:k]
    proj = (x - mean) @ comps.T
    prec = np.linalg.inv(np.cov(proj.T))
    resid_var = (sv[k:] ** 2).sum() / (len(x) - 1) / (x.shape[1] - k)

    def score(z):
        c = z.reshape(len(z), -1) - mean
        p = c @ comps.T
        return np.einsum("ij,jk,ik->i", p, prec, p) + ((c - p @ comps) ** 2).sum(1) / resid_var
    return score


rows = []
for seed, path in zip(cfg.seeds, paths):
    ck = load_checkpoint(path)
    model = ck.inference_model("cpu")
    keep = R._training_rows(cfg, prep, seed)
    x, y = prep.x_full[keep], prep.y_src[keep]
    tr, _ = stratified_split(y, fraction=0.2, seed=seed)
    n, s = prep.variant.season.n_bins, prep.start
    ztr = ck.normalise(x[tr][:, :, s:s + n])
    ftr = penultimate_features(model, ztr)
    product, ridge, inp = fit_ood(ftr, y[tr]), ridge_maha(ftr, y[tr]), input_maha(ztr)
    for d, comp in prep.tgt.items():
        m = R._matrix(comp)
        z = ck.normalise(m)
        f = penultimate_features(model, z)
        logits = ck.infer(m)[0].astype(np.float64)
        right = logits.argmax(1) == prep.y_tgt
        scores = {"penult-maha-lw (product)": ood_distance(f, product), "penult-maha-ridge": ridge(f),
                  "input-maha": inp(z), "energy": -logsumexp(logits, 1),
                  "1-maxprob": 1 - np.exp(logits.max(1) - logsumexp(logits, 1))}
        for k, v in scores.items():
            e = error_detection(v, right)
            rows.append((k, d, seed, e["auroc_errors"], e["oa_at_80"]))
agg = collections.defaultdict(list)
for k, d, seed, a, o in rows:
    agg[(k, d)].append((a, o))
for (k, d), v in sorted(agg.items()):
    a = np.array(v)
    print(f"{k:26s} shift {d:+3d}  AUROC {a[:, 0].mean():.3f} ± {a[:, 0].std(ddof=1):.3f}   OA@80 {a[:, 1].mean():.3f}")
