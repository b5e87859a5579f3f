import json

from joblib import load


class Main(object):  # noqa: UP004 (as UiPath's documentation writes it)
    def __init__(self):
        self.model = load("./model.pkl")

    def predict(self, X):
        # UiPath sends JSON text; a Trainyard service hands over a JSON request's value already parsed.
        if isinstance(X, (str, bytes, bytearray)):
            X = json.loads(X)
        if X and not isinstance(X[0], list):  # one flower: its four numbers
            X = [X]
        result = self.model.predict(X)
        return json.dumps(result.tolist())
