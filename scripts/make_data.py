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


def digits_hyperclean(X, y, n_train: int = 300, n_val: int = 300, corrupt: float = 0.5, seed: int = 0) -> dict:
    """Hyper-cleaning split of the digits data (examples/hyperclean.vr; Franceschi et al. 2017).

    Train (``n_train`` images) with a fraction ``corrupt`` of the labels replaced by a uniformly drawn
    *different* label (``corrupted`` marks them; ``ytr_clean`` keeps the true ones), a clean validation
    split (``n_val``) and a clean test split (the rest).
    """
    rng = np.random.RandomState(seed)
    perm = rng.permutation(len(y))
    tr, va, te = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
    ytr = y[tr].copy()
    bad = np.zeros(n_train, dtype=bool)
    bad[rng.permutation(n_train)[:int(round(corrupt * n_train))]] = True
    ytr[bad] = (ytr[bad] + rng.randint(1, 10, size=bad.sum())) % 10  # never the true label
    return {"Xtr": X[tr], "ytr": ytr, "ytr_clean": y[tr], "corrupted": bad.astype(np.int64),
            "Xva": X[va], "yva": y[va], "Xte": X[te], "yte": y[te]}


def breast_cancer_split(X, y, n_train: int = 60, n_val: int = 200, seed: int = 0) -> dict:
    """Train / validation / test split of breast cancer (examples/logreg_feature_penalty.vr): a small training set."""
    perm = np.random.RandomState(seed).permutation(len(y))
    tr, va, te = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
    return {"Xtr": X[tr], "ytr": y[tr], "Xva": X[va], "yva": y[va], "Xte": X[te], "yte": y[te]}


def breast_cancer_shards(X, y, shards: int = 10, n_train: int = 10, n_val: int = 20, n_test: int = 20,
                         seed: int = 0) -> dict:
    """Breast cancer cut into ``shards`` disjoint blocks of patients (examples/multitask_prior.vr).

    Each block has its own train / validation / test split (``n_train`` / ``n_val`` / ``n_test``
    patients); arrays are stacked by block, e.g. ``Xtr`` is (shards, n_train, 30).
    """
    per = n_train + n_val + n_test
    perm = np.random.RandomState(seed).permutation(len(y))[:shards * per].reshape(shards, per)
    tr, va, te = perm[:, :n_train], perm[:, n_train:n_train + n_val], perm[:, n_train + n_val:]
    return {"Xtr": X[tr], "ytr": y[tr], "Xva": X[va], "yva": y[va], "Xte": X[te], "yte": y[te]}


def unequal_norms(X, y, seed: int = 0) -> dict:
    """Breast-cancer rows rescaled by factors 10^u, u ~ U(-1, 1): row norms spanning ~100x."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-1.0, 1.0, size=X.shape[0])
    return {"X": X * scale[:, None], "y": y}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    bc = datasets.load_breast_cancer()
    np.savez(OUT / "breast_cancer.npz", X=_standardise(bc.data), y=np.where(bc.target == 1, 1.0, -1.0))
    np.savez_compressed(OUT / "breast_cancer_split.npz",
                        **breast_cancer_split(_standardise(bc.data), np.where(bc.target == 1, 1.0, -1.0)))
    np.savez_compressed(OUT / "breast_cancer_shards.npz",
                        **breast_cancer_shards(_standardise(bc.data), np.where(bc.target == 1, 1.0, -1.0)))
    np.savez(OUT / "unequal_norms.npz", **unequal_norms(_standardise(bc.data), np.where(bc.target == 1, 1.0, -1.0)))
    db = datasets.load_diabetes()
    y = np.asarray(db.target, dtype=np.float64)
    np.savez(OUT / "diabetes.npz", X=_standardise(db.data), y=(y - y.mean()) / y.std())
    np.savez(OUT / "diabetes_split.npz", **diabetes_split(_standardise(db.data), (y - y.mean()) / y.std()))
    dg = datasets.load_digits()
    np.savez(OUT / "digits.npz", X=dg.data / 16.0, y=dg.target.astype(np.int64))
    np.savez_compressed(OUT / "digits_hyperclean.npz", **digits_hyperclean(dg.data / 16.0, dg.target.astype(np.int64)))
    for f in sorted(OUT.glob("*.npz")):
        with np.load(f) as z:
            print(f"{f.name}: " + ", ".join(f"{k} {z[k].shape}" for k in z.files))


if __name__ == "__main__":
    main()
