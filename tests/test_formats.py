"""Row shapes (sharegpt, alpaca history), column mapping, task conversion, file types, mixing, splits."""

import csv
import json

import pytest

from chattune.config import ConfigError, load_config
from chattune.data.dataset import load_data_conversations, load_splits
from chattune.data.formats import DataError, RowSpec, load_conversations

SYSTEM_002 = "你是一个文本分类领域的专家，你会接收到一段文本和几个潜在的分类选项列表，请输出文本内容的正确分类"


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def test_sharegpt_with_system_turn_and_row_system(write_jsonl):
    path = write_jsonl([
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q1"},
                           {"from": "gpt", "value": "a1"}, {"from": "human", "value": "q2"},
                           {"from": "gpt", "value": "a2"}]},
        {"system": "Row system", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}]},
    ])
    convs = load_conversations(path, default_system="Default")
    assert convs[0].messages == msgs(("system", "S"), ("user", "q1"), ("assistant", "a1"),
                                     ("user", "q2"), ("assistant", "a2"))
    assert convs[1].messages == msgs(("system", "Row system"), ("user", "q"), ("assistant", "a"))
    assert convs[2].messages == msgs(("system", "Default"), ("user", "q"), ("assistant", "a"))


@pytest.mark.parametrize("row, where, message", [
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
     ":1:conversations[1].from", "unknown role 'bot'"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": 7}]},
     ":1:conversations[1].value", "must be a string"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]},
     ":1:conversations[1].value", "empty assistant answer"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}]},
     ":1:conversations[1]", "alternate"),
    ({"conversations": []}, ":1:conversations", "non-empty list"),
])
def test_sharegpt_errors_name_file_line_field(write_jsonl, row, where, message):
    path = write_jsonl([row])
    with pytest.raises(DataError) as err:
        load_conversations(path)
    assert str(err.value).startswith(f"{path}{where}: ") and message in str(err.value)


def test_alpaca_history_becomes_earlier_rounds(write_jsonl):
    path = write_jsonl([{"instruction": "q3", "input": "", "output": "a3",
                         "history": [["q1", "a1"], ["q2", "a2"]]}])
    (conv,) = load_conversations(path)
    assert conv.messages == msgs(("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"),
                                 ("user", "q3"), ("assistant", "a3"))
    bad = write_jsonl([{"instruction": "q", "output": "a", "history": [["q1", "a1"], ["only one"]]}], "bad.jsonl")
    with pytest.raises(DataError, match=r"bad.jsonl:1:history\[1\]: must be a \[question, answer\] pair"):
        load_conversations(bad)
    empty = write_jsonl([{"instruction": "q", "output": "a", "history": [["q1", " "]]}], "empty.jsonl")
    with pytest.raises(DataError, match=r"empty.jsonl:1:history\[0\]\[1\]: empty assistant answer"):
        load_conversations(empty)


def test_column_mapping_seed_003(write_jsonl):
    path = write_jsonl([{"en_instruction": "Add", "en_input": "1+1", "en_output": "2", "zh_output": "二"}])
    spec = RowSpec(columns={"instruction": "en_instruction", "input": "en_input", "output": "en_output"})
    (conv,) = load_conversations(path, spec=spec)
    assert conv.messages == msgs(("user", "Add\n1+1"), ("assistant", "2"))
    missing = write_jsonl([{"en_instruction": "Add", "en_input": ""}], "missing.jsonl")
    with pytest.raises(DataError, match=r"missing.jsonl:1:en_output: column for 'output' \(data.columns\) is missing"):
        load_conversations(missing, spec=spec)


def test_column_mapping_from_config(write_jsonl):
    path = write_jsonl([{"dialog": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}])
    cfg = load_config(None, [f"data.path={path}", "data.columns={conversations: dialog}"])
    (conv,) = load_data_conversations(cfg.data, cfg.seed)
    assert conv.messages == msgs(("user", "q"), ("assistant", "a"))


def test_task_conversion_seed_002(write_jsonl):
    path = write_jsonl([{"text": "油价上涨", "category": ["经济", "体育"], "output": "经济"},
                        {"text": "x", "category": "a,b", "output": 3}])
    cfg = load_config(None, [f"data.path={path}", "data.prompt=文本:{text},分类选项列表:{category}",
                             "data.response=output", f"data.system={SYSTEM_002}"])
    convs = load_data_conversations(cfg.data, cfg.seed)
    assert convs[0].messages == msgs(("system", SYSTEM_002), ("user", "文本:油价上涨,分类选项列表:['经济', '体育']"),
                                     ("assistant", "经济"))
    assert convs[1].messages[-1] == {"role": "assistant", "content": "3"}
    bad = write_jsonl([{"text": "x", "output": "y"}], "bad.jsonl")
    with pytest.raises(DataError, match=r"bad.jsonl:1:category: missing column \(columns here: text, output\)"):
        load_data_conversations(cfg.data.model_copy(update={"path": str(bad)}), cfg.seed)


def test_task_conversion_needs_prompt_and_response():
    with pytest.raises(ConfigError, match="needs both data.prompt and data.response"):
        load_config(None, ["data.prompt=文本:{text}"])
    with pytest.raises(ConfigError, match="data.path or data.sources, not both"):
        load_config(None, ["data.path=a.json", "data.sources=[{path: b.json}]"])


def write_csv(path, header, rows):
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_rows_keep_line_numbers_across_multiline_cells(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["instruction", "input", "output"],
                     [["q1", "", "line one\nline two"], ["q2", "", "a2"], ["q3", "", "  "]])
    with pytest.raises(DataError, match=r"d.csv:5:output: empty assistant answer"):
        load_conversations(path)
    path.write_text(path.read_text(encoding="utf-8").replace("q3,,  ", "q3,,a3"), encoding="utf-8")
    convs = load_conversations(path)
    assert [c.source.rsplit(":", 1)[1] for c in convs] == ["2", "4", "5"]
    assert convs[0].messages[-1]["content"] == "line one\nline two"


def test_csv_errors_name_the_line(tmp_path):
    short = tmp_path / "short.csv"
    short.write_text("instruction,input,output\nq,,a\nq,a\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"short.csv:3: 2 cells but the header has 3 columns"):
        load_conversations(short)
    quotes = tmp_path / "quotes.csv"
    quotes.write_text('instruction,input,output\nq,,a\nq,,"a"b\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"quotes.csv:3: invalid CSV"):
        load_conversations(quotes)
    header = tmp_path / "header.csv"
    header.write_text("instruction,output,output\nq,a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"header.csv:1: the header must name every column once"):
        load_conversations(header)


def test_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            {"messages": [{"role": "user", "content": "q2"}, {"role": "robot", "content": "a2"}]}]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows[:1]), path)
    (conv,) = load_conversations(path)
    assert conv.messages == msgs(("user", "q"), ("assistant", "a")) and conv.source == f"{path}:1"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"d.parquet:2:messages\[1\].role: unknown role 'robot'"):
        load_conversations(path)


def test_save_to_disk_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(3)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    convs = load_conversations(tmp_path / "ds")
    assert [c.messages[-1]["content"] for c in convs] == ["a0", "a1", "a2"]
    DatasetDict({"train": Dataset.from_list(rows[:2]), "test": Dataset.from_list(rows[2:])}).save_to_disk(
        str(tmp_path / "dd"))
    assert len(load_conversations(tmp_path / "dd")) == 2
    DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "nt"))
    with pytest.raises(DataError, match="no 'train' split"):
        load_conversations(tmp_path / "nt")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one written by datasets.save_to_disk"):
        load_conversations(tmp_path / "plain")


def test_sources_mixed_with_weights(write_jsonl):
    a = write_jsonl([{"instruction": f"a{i}", "output": "x"} for i in range(4)], "a.jsonl")
    b = write_jsonl([{"instruction": f"b{i}", "output": "y"} for i in range(10)], "b.jsonl")
    cfg = load_config(None, [f"data.sources=[{{path: {a}, weight: 2}}, {{path: {b}, weight: 0.5}}]"])
    convs = load_data_conversations(cfg.data, cfg.seed)
    origins = [c.meta["origin"] for c in convs]
    assert origins.count(str(a)) == 8 and origins.count(str(b)) == 5
    assert len({c.source for c in convs if c.meta["origin"] == str(b)}) == 5
    again = load_data_conversations(cfg.data, cfg.seed)
    assert [c.source for c in again] == [c.source for c in convs]


def test_eval_by_file_and_by_ratio(write_jsonl):
    train = write_jsonl([{"instruction": f"q{i}", "output": "a"} for i in range(10)], "train.jsonl")
    held = write_jsonl([{"instruction": "e", "output": "a"}], "eval.jsonl")
    cfg = load_config(None, [f"data.path={train}", f"data.eval_path={held}"])
    tr, ev = load_splits(cfg.data, cfg.seed)
    assert len(tr) == 10 and [c.source for c in ev] == [f"{held}:1"]
    cfg = load_config(None, [f"data.path={train}", "data.eval_ratio=0.2"])
    tr, ev = load_splits(cfg.data, cfg.seed)
    assert len(tr) == 8 and len(ev) == 2 and not {c.source for c in tr} & {c.source for c in ev}


def test_weighted_copies_never_leak_into_eval(write_jsonl):
    a = write_jsonl([{"instruction": f"a{i}", "output": "x"} for i in range(10)], "a.jsonl")
    b = write_jsonl([{"instruction": f"b{i}", "output": "y"} for i in range(10)], "b.jsonl")
    cfg = load_config(None, [f"data.sources=[{{path: {a}, weight: 3}}, {{path: {b}}}]", "data.eval_ratio=0.2"])
    tr, ev = load_splits(cfg.data, cfg.seed)
    assert len(ev) == 4 and len(tr) == 8 * 3 + 8
    assert not {c.source for c in tr} & {c.source for c in ev}


def test_seed_002_classification_csv_trains_with_only_a_yaml(tmp_path, tiny_model_dir):
    from chattune.cli import main

    rows = [[f"第{i}条新闻，关于{topic}", "体育,经济,科技", topic] for i, topic in enumerate(["体育", "经济", "科技"] * 3)]
    write_csv(tmp_path / "train.csv", ["text", "category", "output"], rows)
    config = tmp_path / "classify.yaml"
    config.write_text(json.dumps({
        "name": "classify", "run_dir": str(tmp_path / "run"),
        "model": {"name": str(tiny_model_dir)},
        "data": {"path": str(tmp_path / "train.csv"), "prompt": "文本:{text},分类选项列表:{category}",
                 "response": "output", "system": SYSTEM_002, "max_length": 256},
        "lora": {"r": 4},
        "train": {"max_steps": 2, "precision": "fp32", "batch_size": 2, "grad_accum": 1, "device": "cpu"},
    }, ensure_ascii=False), encoding="utf-8")
    assert main(["train", str(config)]) == 0
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert stats["train"]["examples"] == 9 and stats["train"]["dropped"] == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
