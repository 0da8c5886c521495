"""In-region accuracy of one sample file under a spatial-block split and under a random pixel split.

Five folds each (GroupKFold on 10 km blocks / stratified KFold on pixels), so every sample is tested once
under both and the two figures share their test samples; features and forest as ``cropmap experiment``
(median_composite -> compute_features "1d", cropmap's forest). Usage:
``python experiments/split_leak.py [--trees 200] [--block-km 10]``; prints a Markdown table.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.model_selection import StratifiedKFold

from cropmap.core.composite import median_composite
from cropmap.core.features import compute_features
from cropmap.core.harmonise import harmonise
from cropmap.io.config import load_legend
from cropmap.core.season import Season
from cropmap.ml.evaluate import scores
from cropmap.ml.models.forest import build_forest
from cropmap.samples.sources import SampleSource, read_sample_set
from cropmap.samples.splits import SplitSpec, group_folds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--block-km", type=float, default=10.0)
    args = ap.parse_args()
    spec = SampleSource(path="worldcereal/test_public_extractions.parquet", region=["UGA", "SSD"], year=2016)
    ds = harmonise(read_sample_set(spec, bands=["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]),
                   load_legend("configs/legends/uga-ssd-other.yaml"))
    season = Season(start="12-01", end="11-30", hemisphere="north")
    x = compute_features(median_composite(ds["reflectance"], season, 2016), "1d").transpose("sample", "feature").values
    y = ds["label"].values.astype(int)
    names = [str(c) for c in ds["class_name"].values]
    block = group_folds(ds, SplitSpec(by="block", block_km=args.block_km), n_folds=5)
    pixel = list(StratifiedKFold(5, shuffle=True, random_state=0).split(x, y))
    print(f"| split (5 folds, {len(y)} samples) | OA | balanced acc. | macro-F1 | kappa | lowest class recall |\n"
          "|---|---|---|---|---|---|")
    for name, folds in ((f"block {args.block_km:g} km (GroupKFold)", block), ("random pixels (stratified KFold)", pixel)):
        pred = np.empty_like(y)
        for seed, (tr, te) in enumerate(folds):
            pred[te] = build_forest(seed=seed, n_jobs=1, n_estimators=args.trees).fit(x[tr], y[tr]).predict(x[te])
        s = scores(y, pred, class_names=names)
        worst = min(s["recall"], key=s["recall"].get)
        print(f"| {name} | {s['oa']:.3f} | {s['balanced_accuracy']:.3f} | {s['macro_f1']:.3f} | {s['kappa']:.3f} | "
              f"{worst} {s['recall'][worst]:.3f} |")


if __name__ == "__main__":
    main()
