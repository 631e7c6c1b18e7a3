"""Config loading: defaults, YAML, dotted overrides, and errors that name the key."""

import pytest

from chattune.config import BUILTIN_MODEL, ConfigError, load_config


def test_defaults_follow_seed_000():
    cfg = load_config()
    assert cfg.model.name == BUILTIN_MODEL
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 32, 0.0)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.epochs) == ("auto", 4, 4, 3)
    assert cfg.data.max_length == 384


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 5\nlora:\n  r: 4\n")
    cfg = load_config(path, ["train.epochs=2", "lora.r=16", "data.path=my.json", "lora.targets=[q_proj,v_proj]"])
    assert cfg.name == "x"
    assert cfg.train.epochs == 2
    assert cfg.lora.r == 16
    assert cfg.data.path == "my.json"
    assert cfg.lora.targets == ["q_proj", "v_proj"]


def test_unknown_key_suggests_and_lists_allowed():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epoch=2"])
    text = str(err.value)
    assert "unknown key 'train.epoch'" in text
    assert "did you mean 'epochs'" in text
    assert "Allowed here:" in text and "batch_size" in text


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown key 'trian'.*did you mean 'train'"):
        load_config(None, ["trian.epochs=2"])


def test_wrong_type_and_impossible_values():
    with pytest.raises(ConfigError, match=r"'train.lr'.*got 'fast'"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"'lora.r'.*greater than 0"):
        load_config(None, ["lora.r=0"])
    with pytest.raises(ConfigError, match=r"'train.precision'.*'auto', 'bf16', 'fp16' or 'fp32'"):
        load_config(None, ["train.precision=int3"])


def test_bad_override_syntax_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_example_configs_validate():
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)


def test_relative_paths_in_a_config_file_are_found_next_to_it(tmp_path, monkeypatch):
    """configs/huanhuan.yaml's data from any directory; hub ids, built-ins and overrides stay as written."""
    folder = tmp_path / "recipes"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "rows.jsonl").write_text("{}\n")
    (folder / "run.yaml").write_text(
        "model: {name: Qwen/Qwen1.5-7B-Chat}\n"
        "data: {path: data/rows.jsonl, eval_path: missing.jsonl}\n")
    (folder / "mix.yaml").write_text("data: {sources: [{path: data/rows.jsonl, weight: 1}]}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(folder / "run.yaml")
    assert cfg.data.path == str(folder / "data" / "rows.jsonl")
    assert load_config(folder / "mix.yaml").data.sources[0].path == str(folder / "data" / "rows.jsonl")
    assert cfg.model.name == "Qwen/Qwen1.5-7B-Chat", "a hub id is not a path"
    assert cfg.data.eval_path == "missing.jsonl", "nothing of that name beside the file: left as written"
    assert load_config(folder / "run.yaml", ["data.path=data/rows.jsonl"]).data.path == "data/rows.jsonl"
    assert load_config(None, ["data.path=builtin:self-cognition"]).data.path == "builtin:self-cognition"


def test_shipped_huanhuan_config_finds_the_shared_data_from_anywhere(tmp_path, monkeypatch):
    from pathlib import Path

    config = Path(__file__).resolve().parent.parent / "configs" / "huanhuan.yaml"
    shared = config.parent.parent.parent / "shared" / "data" / "huanhuan.json"
    if not shared.exists():
        pytest.skip(f"{shared} not here: the shared data sits beside the checkout on this project's machines")
    monkeypatch.chdir(tmp_path)
    assert Path(load_config(config).data.path) == shared.resolve()


@pytest.mark.parametrize("override", ["train.lr=inf", "train.lr=.nan", "train.weight_decay=inf", "lora.dropout=nan",
                                      "train.max_steps=0", "train.max_steps=-5"])
def test_non_finite_numbers_and_step_counts_that_mean_nothing_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])
    assert load_config(None, ["train.max_steps=-1"]).train.max_steps == -1  # -1: by epochs


def test_deprecated_eval_steps_is_read_as_eval_every():
    """One interval key: an old config's train.eval_steps still loads, with a warning, as train.eval_every."""
    import warnings

    from chattune.config import validate_config

    with pytest.warns(FutureWarning, match="train.eval_steps is deprecated and read as train.eval_every=5"):
        assert load_config(None, ["train.eval_steps=5"]).train.eval_every == 5
    with pytest.warns(FutureWarning, match="ignored"):
        assert load_config(None, ["train.eval_steps=5", "train.eval_every=3"]).train.eval_every == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every run dir's config.yaml written before holds eval_steps: null
        cfg = validate_config({"train": {"eval_steps": None}})
    assert cfg.train.eval_every is None and "eval_steps" not in cfg.to_yaml()
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="train.eval_every"):
        load_config(None, ["train.eval_steps=0"])
