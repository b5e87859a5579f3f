import glob
import os

import numpy as np
from joblib import dump, load
from sklearn.linear_model import LogisticRegression


class Main(object):  # noqa: UP004 (as UiPath's documentation writes it)
    def __init__(self):
        self.model_path = "./model.pkl"
        self.model = LogisticRegression(max_iter=1000)
        if os.path.exists(self.model_path):
            self.model = load(self.model_path)

    def train(self, training_directory):
        (X, y) = load_data(training_directory)
        self.model.fit(X, y)

    def evaluate(self, evaluation_directory):
        (X, y) = load_data(evaluation_directory)
        return self.model.score(X, y)

    def save(self):
        dump(self.model, self.model_path)


def load_data(path):
    # Every CSV file in `path`; the last column is the target column for prediction.
    files = sorted(glob.glob(os.path.join(path, "*.csv")))
    rows = np.concatenate([np.loadtxt(f, delimiter=",", skiprows=1, dtype=str, ndmin=2) for f in files])
    X = rows[:, :-1].astype(float)
    y = rows[:, -1]
    return X, y
