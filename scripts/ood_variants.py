"""Which out-of-distribution score picks out the misclassified pixels? Measured on the checkpoints that
``cropmap experiment configs/experiments/victoria-shifted-30ep.yaml --cache-dir DIR`` trained (CropNet 2D,
shift+warp, 30 epochs, 3 seeds), on the Victoria test split with its dates moved by -20..+20 days.

    .venv/bin/python scripts/ood_variants.py [DIR]     # DIR: that experiment's cache (default /tmp/exp-cache)

Scores (higher = less trusted), each rated by :func:`cropmap.ml.evaluate.error_detection`:

- ``input-maha (product)``: the checkpoint's own score (:mod:`cropmap.ml.ood`, on the normalised inputs);
- ``penult-maha``: the minimum over classes of the Mahalanobis distance of the penultimate features (the
  global-average-pooled activations the linear head reads) to class means with one shared covariance
  (Lee et al. 2018), fitted on the training split of the same seed;
- ``energy``: ``-logsumexp(logits)`` (Liu et al. 2020); ``1-maxprob``: one minus the top softmax probability.

Prints the mean ± std over seeds of the AUROC for errors and the OA of the 80 % most trusted pixels.
"""
import sys
import numpy as np
import torch
from pathlib import Path
from scipy.special import logsumexp
from cropmap.research.config import load_experiment
from cropmap.research import runner as R
from cropmap.research.variants import variants
from cropmap.samples.sources import read_sample_set
from cropmap.ml.checkpoint import load_checkpoint
from cropmap.ml.train import stratified_split
from cropmap.ml.evaluate import error_detection
from cropmap.ml.models.cropnet import as_matrix_input

cfg = load_experiment("configs/experiments/victoria-shifted-30ep.yaml")
bands, _ = R.resolve_bands(cfg); cfg = cfg.model_copy(update={"bands": bands})
src = read_sample_set(cfg.source, bands=cfg.bands); tgt = read_sample_set(cfg.target, bands=cfg.bands)
prep = R._prepare(cfg, variants(cfg)[0], src, tgt)
spec = cfg.runs[0]
cache = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/exp-cache")
paths = sorted(cache.glob("cropnet-shift+warp-s*.pt"))
if len(paths) != len(cfg.seeds):
    sys.exit(f"expected {len(cfg.seeds)} checkpoints cropnet-shift+warp-s*.pt in {cache}; run the experiment first")
rows = []
for seed, path in zip(cfg.seeds, paths):
    ck = load_checkpoint(path)
    model = ck.inference_model("cpu")
    keep = R._training_rows(cfg, prep, seed)
    x, y = prep.x_full[keep], prep.y_src[keep]
    tr, va = stratified_split(y, fraction=0.2, seed=seed)
    n, s = prep.variant.season.n_bins, prep.start
    @torch.no_grad()
    def feats(m):
        z = torch.from_numpy(ck.normalise(m))
        f = model.features(as_matrix_input(model, z)).flatten(2).mean(-1)
        return f.numpy().astype(np.float64), model.head(f).numpy().astype(np.float64)
    ftr, ltr = feats(x[tr][:, :, s:s+n]); ytr = y[tr]
    mu = np.stack([ftr[ytr == c].mean(0) for c in range(8)])
    cen = ftr - mu[ytr]
    cov = cen.T @ cen / len(cen) + 1e-3 * np.eye(cen.shape[1])
    prec = np.linalg.inv(cov)
    def maha(f):
        d = np.stack([np.einsum("ij,jk,ik->i", f - mu[c], prec, f - mu[c]) for c in range(8)], 1)
        return d.min(1)
    for d, comp in prep.tgt.items():
        m = R._matrix(comp); f, l = feats(m)
        right = l.argmax(1) == prep.y_tgt
        scores = {"input-maha (product)": ck.ood_score(m).astype(np.float64), "penult-maha": maha(f),
                  "energy": -logsumexp(l, 1), "1-maxprob": 1 - np.exp(l.max(1) - logsumexp(l, 1))}
        for k, v in scores.items():
            e = error_detection(v, right)
            rows.append((k, d, seed, e["auroc_errors"], e["oa_at_80"]))
import collections
agg = collections.defaultdict(list)
for k, d, seed, a, o in rows: agg[(k, d)].append((a, o))
for (k, d), v in sorted(agg.items()):
    a = np.array(v)
    print(f"{k:22s} shift {d:+3d}  AUROC {a[:,0].mean():.3f} ± {a[:,0].std(ddof=1):.3f}   OA@80 {a[:,1].mean():.3f}")
