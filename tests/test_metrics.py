"""Metric functions on hand-made predictions with known answers."""

import pytest

from chattune.metrics import (
    accuracy,
    default_labels,
    exact_match,
    lcs_length,
    normalize,
    parse_label,
    parse_metric_list,
    rouge,
    rouge_l,
    rouge_tokens,
    score_generation,
    stop_rate,
)

LABELS = ["sports", "technology", "finance"]


def test_normalize_ignores_case_spacing_and_edge_punctuation():
    assert normalize("  Hello,   World!! ") == "hello, world"
    assert normalize("ＡＢＣ。") == "abc"  # NFKC full-width letters, CJK full stop
    assert exact_match(["Paris.", "paris is big"], ["paris", "Paris"]).per_row == [True, False]


def test_exact_match_value():
    score = exact_match(["a", "b", "c", "d"], ["A", "x", "c!", "y"])
    assert score.value == pytest.approx(0.5)


@pytest.mark.parametrize(("answer", "expected"), [
    ("Sports", "sports"),
    ("sports.", "sports"),
    ("The category is technology.", "technology"),
    ("Category: FINANCE", "finance"),
    ("答案是sports。", "sports"),  # Latin label inside Chinese text
    ("sports or technology", None),  # names two labels
    ("I cannot tell.", None),  # names none
    ("sportsmanship", None),  # not the whole word
])
def test_parse_label(answer, expected):
    assert parse_label(answer, LABELS) == expected


def test_parse_label_prefers_the_longer_label_it_contains():
    assert parse_label("it is ice hockey", ["hockey", "ice hockey"]) == "ice hockey"
    assert parse_label("这是体育新闻", ["体育", "科技"]) == "体育"


def test_accuracy_counts_unparseable_as_wrong_and_lists_them():
    predictions = ["sports", "finance, I think", "no idea", "technology or finance", "technology"]
    references = ["sports", "finance", "sports", "finance", "sports"]
    score = accuracy(predictions, references, LABELS)
    assert score.per_row == [True, True, False, False, False]
    assert score.value == pytest.approx(2 / 5)
    assert score.unparseable == [2, 3]


def test_accuracy_default_labels_are_the_distinct_references():
    refs = ["b", "a", "b", " c "]
    assert default_labels(refs) == ["b", "a", "c"]
    score = score_generation("accuracy", ["a", "B", "x"], ["a", "b", "c"], [True] * 3)
    assert score.value == pytest.approx(2 / 3) and score.unparseable == [2]


def test_rouge_tokens_split_cjk_per_character():
    assert rouge_tokens("我爱北京 Hello, world!") == ["我", "爱", "北", "京", "hello", "world"]


def test_lcs_length():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_english_known_value():
    # pred 3 tokens, ref 6 tokens, LCS 3: P=1, R=0.5, F1=2/3
    assert rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    assert rouge_l("completely different", "nothing shared") == 0.0
    assert rouge_l("", "") == 1.0


def test_rouge_l_chinese_scored_per_character():
    # pred 我爱北京天安门 (7 chars) vs ref 我爱北京 (4 chars): LCS 4, P=4/7, R=1 -> F1=8/11
    assert rouge_l("我爱北京天安门", "我爱北京") == pytest.approx(8 / 11)
    # without per-character tokens these two would share no token at all
    assert rouge_l("今天天气很好", "今天天气不错") == pytest.approx(4 / 6)
    assert rouge(["我爱北京天安门", "abc"], ["我爱北京", "abc"]).value == pytest.approx((8 / 11 + 1) / 2)


def test_stop_rate():
    score = stop_rate([True, False, True, True])
    assert score.value == pytest.approx(0.75)


def test_parse_metric_list():
    assert parse_metric_list("loss, rouge,loss") == ["loss", "rouge"]
    with pytest.raises(ValueError, match="bleu"):
        parse_metric_list("rouge,bleu")
