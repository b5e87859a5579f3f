import json

from joblib import load


class Main(object):  # noqa: UP004 (as UiPath's documentation writes it)
    def __init__(self):
        self.model = load("./model.pkl")

    def predict(self, X):
        X = json.loads(X)
        result = self.model.predict(X)
        return json.dumps(result.tolist())
