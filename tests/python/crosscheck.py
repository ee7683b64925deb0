#!/usr/bin/env python3
"""Independent cross-checks of Vigil's models, driven by agent/tests/model_crosscheck.rs.

Not part of the product: scikit-learn and onnxruntime serve as references only.
Matrices travel as raw little-endian float32 files with their shape given on the command line.

  iforest  TRAIN ROWS COLS TEST TEST_ROWS LABELS     -> prints scikit-learn's ROC-AUC
  onnx     MODEL INPUT ROWS COLS OUTPUT              -> checks the model, writes onnxruntime's output
  foreign  MODEL WIDTH                               -> writes a PyTorch-style autoencoder (MatMul/Gemm transB/Tanh)
  bench    TRAIN ROWS COLS TEST TEST_ROWS REPEATS    -> prints scikit-learn score_samples flows/s (best run)
  forest   TRAIN ROWS COLS TRAIN_Y TEST TEST_ROWS TEST_Y CLASSES TREES DEPTH
                                                     -> prints a RandomForestClassifier's attack-vs-benign
                                                        and one-vs-rest macro ROC-AUC, and its test rows/s
  sklonnx  KIND TRAIN ROWS COLS TRAIN_Y TEST TEST_ROWS MODEL PROBA ZIPMAP
                                                     -> exports a scikit-learn classifier (rf, gb, linear) to ONNX
                                                        with skl2onnx, writes its predict_proba on TEST as f32
Class labels travel as raw little-endian uint16, class 0 being benign.
"""
import sys

import numpy as np


def load(path, rows, cols):
    return np.fromfile(path, dtype="<f4").reshape(int(rows), int(cols))


def iforest(train, rows, cols, test, test_rows, labels):
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import roc_auc_score

    x_train = load(train, rows, cols)
    x_test = load(test, test_rows, cols)
    y = np.fromfile(labels, dtype="u1")
    forest = IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(x_train)
    # score_samples is the negated anomaly score: higher is more normal.
    print(roc_auc_score(y, -forest.score_samples(x_test)))


def onnx_run(model, inp, rows, cols, out):
    import onnx
    import onnxruntime

    onnx.checker.check_model(onnx.load(model), full_check=True)
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    result = session.run(None, {name: load(inp, rows, cols)})[0]
    result.astype("<f4").tofile(out)


def foreign(model, width):
    """An autoencoder shaped the way torch.onnx.export writes nn.Linear layers: Gemm with
    transB=1 (weights stored [out, in]), then MatMul + Add, with Tanh activations."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width = int(width)
    rng = np.random.default_rng(7)
    w1 = rng.normal(0, 0.3, (12, width)).astype("f4")
    b1 = rng.normal(0, 0.1, 12).astype("f4")
    w2 = rng.normal(0, 0.3, (12, width)).astype("f4")
    b2 = rng.normal(0, 0.1, width).astype("f4")
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], name="/fc1/Gemm", transB=1),
        helper.make_node("Tanh", ["h"], ["a"], name="/act/Tanh"),
        helper.make_node("MatMul", ["a", "fc2.weight"], ["m"], name="/fc2/MatMul"),
        helper.make_node("Add", ["m", "fc2.bias"], ["y"], name="/fc2/Add"),
    ]
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch_size", width])],
        [
            numpy_helper.from_array(w1, "fc1.weight"),
            numpy_helper.from_array(b1, "fc1.bias"),
            numpy_helper.from_array(w2, "fc2.weight"),
            numpy_helper.from_array(b2, "fc2.bias"),
        ],
    )
    m = helper.make_model(graph, producer_name="pytorch", opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, model)


def bench(train, rows, cols, test, test_rows, repeats):
    import time

    import sklearn
    from sklearn.ensemble import IsolationForest

    x_train = load(train, rows, cols)
    x_test = load(test, test_rows, cols)
    forest = IsolationForest(n_estimators=100, max_samples=256, random_state=0, n_jobs=1).fit(x_train)
    best = float("inf")
    for _ in range(int(repeats)):
        start = time.perf_counter()
        forest.score_samples(x_test)
        best = min(best, time.perf_counter() - start)
    print(f"{len(x_test) / best} {sklearn.__version__}")


def forest(train, rows, cols, train_y, test, test_rows, test_y, classes, trees, depth):
    from sklearn.ensemble import RandomForestClassifier

    def make():
        return RandomForestClassifier(
            n_estimators=int(trees),
            max_depth=int(depth),
            min_samples_leaf=2,
            max_features="sqrt",
            random_state=0,
            n_jobs=2,
        )

    classify(make, train, rows, cols, train_y, test, test_rows, test_y, classes)


def boosted(train, rows, cols, train_y, test, test_rows, test_y, classes, iterations, _unused):
    from sklearn.ensemble import HistGradientBoostingClassifier

    def make():
        return HistGradientBoostingClassifier(
            max_iter=int(iterations),
            learning_rate=0.1,
            max_leaf_nodes=31,
            min_samples_leaf=20,
            l2_regularization=1.0,
            max_bins=255,
            early_stopping=False,
            random_state=0,
        )

    classify(make, train, rows, cols, train_y, test, test_rows, test_y, classes)


def classify(make, train, rows, cols, train_y, test, test_rows, test_y, classes):
    """Fits make() on the training rows; prints attack-vs-benign ROC-AUC, one-vs-rest macro
    ROC-AUC and predict_proba rows per second (one job)."""
    import time

    from sklearn.metrics import roc_auc_score

    x_train = np.nan_to_num(load(train, rows, cols), nan=np.finfo("f4").max)
    x_test = np.nan_to_num(load(test, test_rows, cols), nan=np.finfo("f4").max)
    y_train = np.fromfile(train_y, dtype="<u2")
    y_test = np.fromfile(test_y, dtype="<u2")
    model = make().fit(x_train, y_train)
    if hasattr(model, "n_jobs"):
        model.set_params(n_jobs=1)
    start = time.perf_counter()
    proba = model.predict_proba(x_test)
    rate = len(x_test) / (time.perf_counter() - start)
    # Columns of classes the training rows lacked are zero.
    full = np.zeros((len(x_test), int(classes)))
    full[:, model.classes_] = proba
    attack = roc_auc_score(y_test != 0, 1.0 - full[:, 0])
    present = [c for c in range(int(classes)) if 0 < (y_test == c).sum() < len(y_test)]
    macro = np.mean([roc_auc_score(y_test == c, full[:, c]) for c in present])
    print(f"{attack} {macro} {rate}")


def sklonnx(kind, train, rows, cols, train_y, test, test_rows, model, proba, zipmap):
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x_train = load(train, rows, cols)
    x_test = load(test, test_rows, cols)
    y = np.fromfile(train_y, dtype="<u2").astype(np.int64)
    clf = {
        "rf": lambda: RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0),
        "gb": lambda: GradientBoostingClassifier(n_estimators=10, max_depth=3, random_state=0),
        "linear": lambda: LogisticRegression(max_iter=500),
    }[kind]().fit(x_train, y)
    options = {id(clf): {"zipmap": zipmap == "zipmap"}}
    onx = to_onnx(clf, x_train[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    with open(model, "wb") as f:
        f.write(onx.SerializeToString())
    clf.predict_proba(x_test).astype("<f4").tofile(proba)


if __name__ == "__main__":
    commands = {
        "iforest": iforest,
        "onnx": onnx_run,
        "foreign": foreign,
        "bench": bench,
        "forest": forest,
        "boosted": boosted,
        "sklonnx": sklonnx,
    }
    commands[sys.argv[1]](*sys.argv[2:])
