"""The reference pipeline of ``manifests/samples/digits-ensemble.yaml``, in plain Python.

``python digits/pipeline.py preprocess|train|fuse``. Everything it reads and writes goes through
the aitask environment contract (docs/user-guide.md, "Variants, ensembles and the workspace"), so
it runs unchanged under ``aitask local`` and in the cluster's pods:

- preprocess: scikit-learn's bundled digits (1,797 8x8 images), scaled, split 70/30 with a fixed
  seed, written to ``$AITASK_OUTPUT/digits.npz``;
- train (one ensemble member per variant, ``--model small|medium|large``): reads the split from
  ``$AITASK_INPUTS``, fits its model, writes its test-set predictions and accuracy;
- fuse: weighted voting over ``$AITASK_MEMBERS`` (each member's output and weight), writes and
  prints every member's accuracy and the fused accuracy.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _out() -> Path:
    out = Path(os.environ["AITASK_OUTPUT"])
    out.mkdir(parents=True, exist_ok=True)
    return out


def preprocess() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.3, random_state=0, stratify=y)
    np.savez(_out() / "digits.npz", x_train=x_train, x_test=x_test, y_train=y_train, y_test=y_test)
    print(f"preprocess: {len(y_train)} training and {len(y_test)} test images")


def _model(name: str) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.svm import SVC

    # Three models of growing cost and accuracy.
    return {"small": GaussianNB, "medium": lambda: LogisticRegression(max_iter=2000), "large": SVC}[name]()


def train(model: str) -> None:
    inputs = json.loads(os.environ["AITASK_INPUTS"])
    data = np.load(Path(inputs["preprocess"]) / "digits.npz")
    started = time.perf_counter()
    clf = _model(model).fit(data["x_train"], data["y_train"])
    predicted = clf.predict(data["x_test"])
    accuracy = float(np.mean(predicted == data["y_test"]))
    out = _out()
    np.save(out / "predictions.npy", predicted)
    np.save(out / "labels.npy", data["y_test"])
    metrics = {"variant": os.environ.get("AITASK_VARIANT", model), "model": model, "accuracy": accuracy,
               "seconds": round(time.perf_counter() - started, 3)}
    (out / "metrics.json").write_text(json.dumps(metrics))
    print(f"train {model}: accuracy {accuracy:.4f}")


def fuse() -> None:
    members = json.loads(os.environ["AITASK_MEMBERS"])
    labels = None
    votes = None
    report: dict[str, Any] = {"members": {}}
    for m in members:
        where = Path(m["output"])
        predicted = np.load(where / "predictions.npy")
        labels = np.load(where / "labels.npy")
        if votes is None:
            votes = np.zeros((len(predicted), 10))
        votes[np.arange(len(predicted)), predicted] += float(m["weight"])  # weighted voting
        accuracy = json.loads((where / "metrics.json").read_text())["accuracy"]
        report["members"][m["variant"] or m["subtask"]] = {"accuracy": accuracy, "weight": m["weight"]}
    if votes is None or labels is None:
        sys.exit("fuse: AITASK_MEMBERS lists no member")
    report["fused_accuracy"] = float(np.mean(votes.argmax(axis=1) == labels))
    (_out() / "metrics.json").write_text(json.dumps(report, sort_keys=True))
    for name, m in sorted(report["members"].items()):
        print(f"fuse: member {name}: accuracy {m['accuracy']:.4f} (weight {m['weight']:g})")
    print(f"fuse: weighted vote of {len(members)}: accuracy {report['fused_accuracy']:.4f}")


def main(argv: list[str]) -> None:
    step = argv[1] if len(argv) > 1 else ""
    if step == "preprocess":
        preprocess()
    elif step == "train" and len(argv) == 4 and argv[2] == "--model":
        train(argv[3])
    elif step == "fuse":
        fuse()
    else:
        sys.exit("usage: pipeline.py preprocess | train --model small|medium|large | fuse")


if __name__ == "__main__":
    main(sys.argv)
