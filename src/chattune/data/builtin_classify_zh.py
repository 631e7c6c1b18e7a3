"""A Chinese topic set in seed 002's own shape (text, category option list, output), written by the project.

Seed 002 trains Qwen2 on zh_cls_fudan-news rows {text, category: [options], output}; that set is
a download, so this module builds a small stand-in from per-topic Chinese templates (subject +
event + detail), deterministic and offline, with train and test splits that share no sentence
(builtin_classify.topic_texts). `python -m chattune.data.builtin_classify_zh OUT_DIR` writes
train-task.jsonl and test-task.jsonl. It does not read or convert rows (formats.py does).
"""

from __future__ import annotations

from pathlib import Path

from chattune.data.builtin_classify import main, topic_texts, write_jsonl_files

PARTS_ZH: dict[str, tuple[list[str], list[str], list[str]]] = {
    "体育": (
        ["主队", "我们的前锋", "网球冠军", "年轻的短跑选手", "篮球队", "老门将", "自行车队", "橄榄球队长"],
        ["赢得了决赛", "打破了纪录", "在加时赛中落败", "签下了新合同", "为马拉松做准备", "梅开二度"],
        ["，现场座无虚席。", "，下半场十分紧张。", "，在全国锦标赛上。", "，尽管膝盖受了伤。", "，就在赛季揭幕战前。"],
    ),
    "科技": (
        ["这家初创公司", "一款新手机", "芯片制造商", "这次软件更新", "我们的实验室", "云服务商", "机器人公司", "一款热门应用"],
        ["发布了更快的处理器", "修复了一个安全漏洞", "推出了人工智能助手", "让电池续航翻了一倍", "开源了代码", "降低了服务器成本"],
        ["，面向全球开发者。", "，经过数月测试。", "，搭载新的操作系统。", "，用上了机器学习。", "，赶在科技大会之前。"],
    ),
    "美食": (
        ["主厨", "我的奶奶", "面包店", "一位美食博主", "面馆", "糕点师", "我们的厨房团队", "街边小贩"],
        ["烤了新鲜的面包", "慢炖了番茄酱", "分享了一道汤的做法", "烤了蔬菜", "给烤鸡调了味", "打散了鸡蛋"],
        ["，加了大蒜和黄油。", "，小火煮了两个小时。", "，用的是新鲜香草。", "，在晚饭上桌前。", "，撒了一小撮盐。"],
    ),
    "天气": (
        ["天气预报说", "一股冷空气", "这场暴风雨", "强降雨", "这轮热浪", "浓雾", "大风", "今年的第一场雪"],
        ["将袭击沿海地区", "引发了洪水", "让气温升高", "导致早班航班延误", "午后将会消散", "笼罩了山谷"],
        ["，就在这个周末。", "，波及北方大部分地区。", "，阵风超过每小时八十公里。", "，气象专家如是说。", "，已经连续三天。"],
    ),
    "财经": (
        ["央行", "股市", "这家公司", "投资者", "债券市场", "一家大银行", "人民币汇率", "零售销售额"],
        ["上调了利率", "大幅下跌", "公布了创纪录的利润", "增持了股票", "削减了股息", "收复了失地"],
        ["，在通胀数据公布后。", "，在交易时段内。", "，在上个季度。", "，在衰退担忧之中。", "，随着美元走弱。"],
    ),
}
LABELS_ZH = list(PARTS_ZH)


def task_rows_zh(split: str = "train", seed: int = 0) -> list[dict]:
    """Seed 002's raw rows {text, category: [options], output}, read with data.prompt / data.response."""
    return [{"text": text, "category": LABELS_ZH, "output": label}
            for text, label in topic_texts(split, seed, parts=PARTS_ZH, joiner="")]


def write_files_zh(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """train-task.jsonl and test-task.jsonl in OUT_DIR."""
    return write_jsonl_files({Path(out_dir) / f"{split}-task.jsonl": task_rows_zh(split, seed) for split in ("train", "test")})


if __name__ == "__main__":
    main(write_files_zh, "chattune.data.builtin_classify_zh")
