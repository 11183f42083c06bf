"""Pluggable safety / quality classifiers: loading `module:Class` plug-ins, and a trainable default.

A classifier is any object with `predict(texts) -> P(bad)` per text (`stage.Classifier`). The trainable
one fits character 1-3-gram hashing features + logistic regression on a labelled file in seconds:
the right size for "flag the adverts that look like these 200 examples", not a content-safety model.
"""

from __future__ import annotations

import importlib

import numpy as np

from conan_embed.curate.curate_config import ClassifierConfig, TrainedClassifierConfig
from conan_embed.curate.stage_interface import Filter
from conan_embed.errors import InputError


def load_classifier(config: ClassifierConfig, key: str):
    module_name, _, class_name = config.name.partition(":")
    if not class_name:
        raise InputError(f"{key}.name: expected 'module:Class', got {config.name!r}", field=f"{key}.name")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"{key}.name: cannot import {config.name!r} ({exc})", field=f"{key}.name") from exc
    model = cls(**config.options)
    if not callable(getattr(model, "predict", None)):
        raise InputError(f"{key}.name: {config.name} has no predict(texts) method", field=f"{key}.name")
    return model


def load_classifiers(configs: list[ClassifierConfig], key: str) -> list[tuple[str, object, float]]:
    """(name, model, threshold) for each configured plug-in; `key` names the config list in errors."""
    return [(c.name, load_classifier(c, f"{key}[{i}]"), c.threshold) for i, c in enumerate(configs)]


class CharNgramClassifier:
    """Character 1-3-gram hashing features + logistic regression, fitted on (texts, 0/1 labels)."""

    def __init__(self, texts: list[str], labels: list[int], seed: int = 0):
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.linear_model import LogisticRegression

        self.vectorizer = HashingVectorizer(analyzer="char", ngram_range=(1, 3), n_features=2**18,
                                            alternate_sign=False, norm="l2")
        self.model = LogisticRegression(max_iter=1000, C=10.0, random_state=seed)
        self.model.fit(self.vectorizer.transform(texts), labels)

    def predict(self, texts: list[str]) -> np.ndarray:
        return self.model.predict_proba(self.vectorizer.transform(texts))[:, 1]

    @classmethod
    def from_file(cls, config: TrainedClassifierConfig, path, key: str) -> CharNgramClassifier:
        from conan_embed.curate.io import read_labelled

        texts, labels = read_labelled(path, config.text_field, config.label_field)
        if len(set(labels)) < 2:
            raise InputError(f"{key}.file: needs rows of both labels 0 and 1 in '{config.label_field}'",
                             path=path, field=f"{key}.file")
        return cls(texts, labels)


class ClassifierFilter(Filter):
    """Rejects a pair that breaks a rule (`check_rules`) or for which a classifier's P(bad) of
    `query\\npassage` reaches its threshold (rule `classifier:<name>`)."""

    def __init__(self, name: str, classifiers: list[tuple[str, object, float]], fields: dict[str, str]):
        super().__init__()
        self.name, self.classifiers, self.fields = name, classifiers, fields

    def check_rules(self, record) -> tuple[str, str] | None:
        """Cheap per-row rules, run before the classifiers (subclasses)."""
        return None

    def check_batch(self, records):
        verdicts = [self.check_rules(r) for r in records]
        rest = [i for i, v in enumerate(verdicts) if v is None]
        if not rest or not self.classifiers:
            return verdicts
        texts = [f"{records[i].row[self.fields['query']]}\n{records[i].row[self.fields['passage']]}" for i in rest]
        for label, model, threshold in self.classifiers:
            probs = np.asarray(model.predict(texts), dtype=float)
            if probs.shape != (len(texts),):
                raise InputError(f"classifier {label} returned shape {probs.shape} for {len(texts)} texts")
            for i, p in zip(rest, probs):
                if verdicts[i] is None and p >= threshold:
                    verdicts[i] = (f"classifier:{label}", f"P(bad) {p:.2f} >= {threshold}")
        return verdicts
