"""The per-row stages on Chinese text: each rule rejects what it should, with its own reason, and no
more."""

from __future__ import annotations

import pytest

from conan_embed.curate.curate_config import (ClassifierConfig, HeuristicsConfig, LanguageConfig, NormalizeConfig,
                                       QualityConfig, SafetyConfig, TrainedClassifierConfig)
from conan_embed.curate.heuristics import HeuristicFilter
from conan_embed.curate.language import LanguageFilter
from conan_embed.curate.normalize import TextNormalizer
from conan_embed.curate.quality import QualityFilter
from conan_embed.curate.curation_record import Record
from conan_embed.curate.safety import SafetyFilter
from conan_embed.errors import InputError

FIELDS = {"query": "query", "passage": "passage"}
GOOD_PASSAGE = "人寿保险的受益人一般不需要为死亡抚恤金缴纳所得税，但遗产税要看具体情况。"


def records(*pairs, **extra) -> list[Record]:
    return [Record({"query": q, "passage": p, **extra}, i, f"test:{i + 1}") for i, (q, p) in enumerate(pairs)]


def verdicts(stage, *pairs, **extra) -> list[str | None]:
    return [r.reason for r in stage.run(records(*pairs, **extra))]


def test_normalize_keeps_chinese_punctuation_and_fixes_the_rest():
    stage = TextNormalizer(NormalizeConfig(), FIELDS)
    [r] = stage.run(records(("ＡＢＣ１２３，什么？", "第一行\u200b  有\t空格\u3000\r\n\n\n\n第二行（注）\x07")))
    assert r.row["query"] == "ABC123，什么？"
    assert r.row["passage"] == "第一行 有 空格\n\n第二行（注）"
    assert stage.counters["changed:query"] == 1 and stage.counters["kept"] == 1


def test_normalize_rejects_a_text_left_empty():
    stage = TextNormalizer(NormalizeConfig(), FIELDS)
    [r] = stage.run(records(("好问题", "\u200b \u3000")))
    assert r.reason == "normalize:empty" and "passage" in r.detail


def test_t2s_needs_opencc_and_auto_leaves_simplified_alone():
    opencc = pytest.importorskip("opencc", reason="optional: pip install opencc")
    assert opencc
    stage = TextNormalizer(NormalizeConfig(t2s="auto"), FIELDS)
    # t2s would turn the correct Simplified 回覆 into 回复: one character in 23 is under the 5 % rule
    simplified = "请尽快回覆我关于人寿保险理赔流程和保险范围的问题"
    [r] = stage.run(records(("臺灣的軟體怎麼樣", simplified)))
    assert r.row["query"] == "台湾的软体怎么样" and r.row["passage"] == simplified


@pytest.mark.parametrize("query, reason", [
    ("什么是Medicare QMB？", None), ("AIG的人寿保险怎么样", None), ("哈哈哈", None),
    ("What is term life insurance?", "language:not_zh"), ("X-", "language:not_zh"),
    ("日本の保険はどうですか", "language:ja"), ("보험 가입 방법은 무엇입니까", "language:ko"),
])
def test_language_script_rule(query, reason):
    assert verdicts(LanguageFilter(LanguageConfig(), FIELDS), (query, GOOD_PASSAGE)) == [reason]


def test_language_cld2_backend_decides_the_mixed_texts():
    pytest.importorskip("pycld2", reason="optional: pip install pycld2")
    stage = LanguageFilter(LanguageConfig(backend="cld2"), FIELDS)
    got = verdicts(stage, ("什么是Medicare QMB？", GOOD_PASSAGE), ("Obamacare覆盖Medigap？", GOOD_PASSAGE),
                   ("What is term life insurance?", GOOD_PASSAGE))
    assert got == [None, None, "language:not_zh"]
    assert "cld2 says not Chinese" in stage.run(records(("What is term life insurance?", GOOD_PASSAGE)))[0].detail


@pytest.mark.parametrize("passage, reason", [
    ("短", "heuristics:too_short"),
    ("价格表：" + "12345 67890 " * 6, "heuristics:digit_ratio"),
    ("★☆★☆★☆★☆★☆###***@@@&&&保险说明★☆★☆★☆", "heuristics:symbol_ratio"),
    ("点击下一页\n点击下一页\n点击下一页\n点击下一页\n保险", "heuristics:duplicate_lines"),
    ("买一送一限时抢购优惠多多多" * 10, "heuristics:repeated_ngrams"),
    (GOOD_PASSAGE + "关注公众号了解更多。", "heuristics:boilerplate"),
    (GOOD_PASSAGE + "请大家关注这个问题。", None),  # 关注 alone is ordinary news language
    ("401K计划的缴费上限在2019年是每年19500美元，50岁以上可以额外缴纳6000美元。", None),  # digits 0.43
])
def test_heuristic_rules(passage, reason):
    assert verdicts(HeuristicFilter(HeuristicsConfig(), FIELDS), ("保险问题", passage)) == [reason]


def test_short_queries_with_digits_are_fine():
    assert verdicts(HeuristicFilter(HeuristicsConfig(), FIELDS), ("401K到期吗？", GOOD_PASSAGE)) == [None]


def test_real_chinese_pairs_pass_the_heuristics_and_language_rules(shipped_pairs):
    """No English-centric rule (word counts, stop words, end punctuation) may reject Chinese text."""
    recs = [Record(dict(p), i, f"s:{i}") for i, p in enumerate(shipped_pairs)]
    for stage in (LanguageFilter(LanguageConfig(), FIELDS), HeuristicFilter(HeuristicsConfig(), FIELDS)):
        recs = stage.run(recs)
    rejected = [r for r in recs if r.reason]
    assert len(rejected) <= 0.01 * len(recs), [(r.reason, r.detail) for r in rejected]


def test_safety_blocklists_from_files(tmp_path):
    (tmp_path / "domains.txt").write_text("# bad sites\nbad-casino.com\n\n", encoding="utf-8")
    (tmp_path / "words.txt").write_text("赌博网站  # comment\n", encoding="utf-8")
    cfg = SafetyConfig(domain_blocklist=str(tmp_path / "domains.txt"), keyword_blocklist=str(tmp_path / "words.txt"))
    stage = SafetyFilter(cfg, FIELDS)
    got = verdicts(stage, ("保险问题", GOOD_PASSAGE), ("保险问题", "推荐一个赌博网站给你" + GOOD_PASSAGE),
                   ("保险问题", "详情见 www.bad-casino.com 页面" + GOOD_PASSAGE))
    assert got == [None, "safety:keyword", "safety:domain"]
    [r] = stage.run(records(("保险问题", GOOD_PASSAGE), url="https://m.bad-casino.com/x"))
    assert r.reason == "safety:domain" and "m.bad-casino.com" in r.detail


def test_safety_blocklist_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="domain_blocklist.*no such file"):
        SafetyFilter(SafetyConfig(domain_blocklist=str(tmp_path / "missing.txt")), FIELDS)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.txt.*not UTF-8"):
        SafetyFilter(SafetyConfig(keyword_blocklist=str(tmp_path / "latin1.txt")), FIELDS)


class KeywordScoreClassifier:
    """A plug-in for the tests: P(bad) = 0.9 for texts with `word`, else 0.1."""

    def __init__(self, word: str):
        self.word = word

    def predict(self, texts):
        return [0.9 if self.word in t else 0.1 for t in texts]


def test_pluggable_classifier(monkeypatch):
    import sys
    import types

    module = types.ModuleType("fake_safety_plugin")
    module.KeywordScoreClassifier = KeywordScoreClassifier
    monkeypatch.setitem(sys.modules, "fake_safety_plugin", module)
    cfg = SafetyConfig(classifiers=[ClassifierConfig("fake_safety_plugin:KeywordScoreClassifier", 0.5, {"word": "毒"})])
    stage = SafetyFilter(cfg, FIELDS)
    records_ = stage.run(records(("保险问题", GOOD_PASSAGE), ("有毒内容", GOOD_PASSAGE)))
    assert [r.reason for r in records_] == [None, "safety:classifier:fake_safety_plugin:KeywordScoreClassifier"]
    assert "0.90" in records_[1].detail
    with pytest.raises(InputError, match=r"classifiers\[0\].name.*module:Class"):
        SafetyFilter(SafetyConfig(classifiers=[ClassifierConfig("no_colon")]), FIELDS)
    with pytest.raises(InputError, match="cannot import"):
        SafetyFilter(SafetyConfig(classifiers=[ClassifierConfig("no_such_module_x:Y")]), FIELDS)


@pytest.mark.parametrize("passage, reason", [
    (GOOD_PASSAGE + "详情请加微信：abc12345", "quality:advert"),
    (GOOD_PASSAGE + "咨询请拨13912345678", "quality:advert"),
    (GOOD_PASSAGE + "QQ：123456789", "quality:advert"),
    (GOOD_PASSAGE + "锟斤拷锟斤拷", "quality:mojibake"),
    (GOOD_PASSAGE + "！！！！！！！！！！", "quality:char_run"),
    ("根据www.irs.gov，雇主为员工支付的团体人寿保险保费在五万美元以内不计入应税收入。", None),
    (GOOD_PASSAGE, None),
])
def test_quality_rules(passage, reason):
    assert verdicts(QualityFilter(QualityConfig(), FIELDS), ("保险问题", passage)) == [reason]


def test_trained_quality_classifier_separates_adverts(tmp_path, shipped_pairs):
    import json
    import random

    rng = random.Random(0)
    hooks = ["限时抢购，买一送一，赶快下单", "全场五折包邮，扫码领取红包", "低价代购正品，私信下单", "爆款特价秒杀，手慢无"]
    rows = [{"text": p["passage"], "label": 0} for p in shipped_pairs[:100]]
    rows += [{"text": rng.choice(hooks) + p["passage"][:20], "label": 1} for p in shipped_pairs[100:200]]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = QualityConfig(advert=False, train=TrainedClassifierConfig(file=str(path)))
    stage = QualityFilter(cfg, FIELDS)
    got = verdicts(stage, ("保险问题", shipped_pairs[300]["passage"]), ("好货", "爆款特价秒杀，手慢无，全场五折包邮"))
    assert got == [None, "quality:classifier:trained"]
    (tmp_path / "one_label.jsonl").write_text('{"text": "好", "label": 0}\n', encoding="utf-8")
    with pytest.raises(InputError, match="both labels"):
        QualityFilter(QualityConfig(train=TrainedClassifierConfig(file=str(tmp_path / "one_label.jsonl"))), FIELDS)
