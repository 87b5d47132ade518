"""Write the bundled example data sets (examples/data/*.npz) from scikit-learn's bundled data.

Standardised features (zero mean, unit variance). Labels: breast cancer in {-1, +1};
diabetes target standardised; digits labels in 0..9 with pixels scaled to [0, 1].
Run: python scripts/make_data.py  (deterministic; no network).
"""

from pathlib import Path

import numpy as np
from sklearn import datasets

OUT = Path(__file__).resolve().parent.parent / "examples" / "data"


def _standardise(X):
    X = np.asarray(X, dtype=np.float64)
    s = X.std(axis=0)
    s[s == 0] = 1.0
    return (X - X.mean(axis=0)) / s


def diabetes_split(X, y, n_train: int = 50, seed: int = 0) -> dict:
    """A deterministic train/validation split of the diabetes data (examples/ridge_hyper.vr).

    A small training set (50 patients, the rest for validation), where the ridge penalty matters.
    """
    perm = np.random.RandomState(seed).permutation(len(y))
    tr, va = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    return {"Xtr": X[tr], "ytr": y[tr], "Xva": X[va], "yva": y[va]}


def unequal_norms(X, y, seed: int = 0) -> dict:
    """Breast-cancer rows rescaled by factors 10^u, u ~ U(-1, 1): row norms spanning ~100x."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-1.0, 1.0, size=X.shape[0])
    return {"X": X * scale[:, None], "y": y}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    bc = datasets.load_breast_cancer()
    np.savez(OUT / "breast_cancer.npz", X=_standardise(bc.data), y=np.where(bc.target == 1, 1.0, -1.0))
    np.savez(OUT / "unequal_norms.npz", **unequal_norms(_standardise(bc.data), np.where(bc.target == 1, 1.0, -1.0)))
    db = datasets.load_diabetes()
    y = np.asarray(db.target, dtype=np.float64)
    np.savez(OUT / "diabetes.npz", X=_standardise(db.data), y=(y - y.mean()) / y.std())
    np.savez(OUT / "diabetes_split.npz", **diabetes_split(_standardise(db.data), (y - y.mean()) / y.std()))
    dg = datasets.load_digits()
    np.savez(OUT / "digits.npz", X=dg.data / 16.0, y=dg.target.astype(np.int64))
    for f in sorted(OUT.glob("*.npz")):
        with np.load(f) as z:
            print(f"{f.name}: " + ", ".join(f"{k} {z[k].shape}" for k in z.files))


if __name__ == "__main__":
    main()
