"""The training mixture: TRL's `datasets:` list semantics, exact row counts, seeds, filters and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml
from datasets import Dataset

from helpers import write_folder
from popalign.contrasts import PAPER
from popalign.dataset.flags import Flag, Flags, pair_digest, write_flags
from popalign.dataset.schema import features, make_row
from popalign.mixture import MixtureConfig, MixtureError, load_mixture

RECIPES = Path(__file__).parents[1] / "train" / "recipes"


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return write_folder(tmp_path / "popalign", {"prefix": 40, "demon": 10, "elicitive": 8, "refine": 6})


def mix(*entries: dict, seed: int = 0, **options) -> tuple[list[str], list[int]]:
    """Load a mixture; return the strategy of each row and the rows taken per entry."""
    mixture = load_mixture(MixtureConfig(datasets=list(entries), **options), seed=seed)
    return mixture.splits["train"]["strategy"], [part.taken for part in mixture.parts]


def test_fractions_are_trl_shares_of_the_largest_mixture_without_repeats(folder: Path) -> None:
    strategies, taken = mix(
        {"path": str(folder), "name": "prefix", "fraction": 0.75},
        {"path": str(folder), "name": "demon", "fraction": 0.25},
    )
    # demon's 10 rows bound the mixture at 40 rows: 30 prefix + 10 demon.
    assert taken == [30, 10]
    assert strategies.count("prefix") == 30 and strategies.count("demon") == 10


def test_rows_are_exact_and_entries_without_amounts_are_taken_whole(folder: Path) -> None:
    strategies, taken = mix({"path": str(folder), "name": "prefix", "rows": 7}, {"path": str(folder), "name": "refine"})
    assert taken == [7, 6]
    assert strategies == ["prefix"] * 7 + ["refine"] * 6


def test_rows_are_sampled_with_the_seed(folder: Path) -> None:
    def ids(seed: int) -> list[str]:
        config = MixtureConfig(datasets=[{"path": str(folder), "name": "prefix", "rows": 10}])
        return load_mixture(config, seed=seed).splits["train"]["prompt_id"]

    assert ids(1) == ids(1)
    assert ids(1) != ids(2)
    assert ids(1) != [f"prefix-{i}" for i in range(10)], "a sample, not the first rows"


@pytest.mark.slow
def test_filters_are_off_by_default_and_counted_when_on(folder: Path) -> None:
    entries = [{"path": str(folder), "name": name} for name in ("demon", "elicitive")]
    assert mix(*entries)[1] == [10, 8]
    # scores are i - 2: rows 2.. of each config pass a minimum of 0
    assert mix(*entries, filter_min_score=0.0)[1] == [8, 6]
    # reasoning on the even elicitive rows only; other strategies have none and keep every row
    assert mix(*entries, filter_require_reasoning=True)[1] == [10, 4]
    # prompt "qI" (2 chars) + chosen of 10*I+1 chars: rows 0..4 fit in 45 characters
    mixture = load_mixture(MixtureConfig(datasets=entries, filter_max_chars=45))
    assert [(p.taken, p.filtered) for p in mixture.parts] == [(5, 5), (5, 3)]
    assert "mixture " + str(folder) + ":demon: 5 of 10 rows (5 filtered out)" in mixture.describe()


def test_test_split_and_column_selection(folder: Path) -> None:
    entry = {"path": str(folder), "name": "prefix", "columns": ["prompt", "chosen", "rejected"]}
    splits = load_mixture(MixtureConfig(datasets=[entry], test_split_size=0.25)).splits
    assert (len(splits["train"]), len(splits["test"])) == (30, 10)
    assert splits["train"].column_names == ["prompt", "chosen", "rejected"]


@pytest.mark.parametrize(
    ("entries", "options", "message"),
    [
        ([], {}, "the mixture is empty: list at least one config under `datasets:` or give --dataset_name"),
        ([{"name": "elicitve"}], {}, "datasets[0] (FOLDER:elicitve): no config 'elicitve'; the configs are prefix, "
         "demon, elicitive, refine (skip it with skip_missing: true)"),
        ([{"name": "prefix", "fraction": 0}], {}, "datasets[0] (FOLDER:prefix): fraction 0 is outside (0, 1]"),
        ([{"name": "prefix", "fraction": 1.5}], {}, "datasets[0] (FOLDER:prefix): fraction 1.5 is outside (0, 1]"),
        ([{"name": "prefix", "fraction": 0.5}, {"name": "demon"}], {},
         "fraction must be given for every entry of the mixture or for none (as in TRL)"),
        ([{"name": "prefix", "fraction": 0.5, "rows": 3}], {},
         "datasets[0] (FOLDER:prefix): give fraction or rows, not both"),
        ([{"name": "demon", "rows": 11}], {}, "datasets[0] (FOLDER:demon): asks for 11 rows but has 10 to give"),
        ([{"name": "demon", "rows": 0}], {}, "datasets[0] (FOLDER:demon): rows 0 must be at least 1"),
        ([{"name": "demon", "split": "test"}], {}, "datasets[0] (FOLDER:demon): no split 'test'"),
        ([{"name": "demon", "columns": ["answer"]}], {}, "datasets[0] (FOLDER:demon): no column 'answer'"),
        ([{"name": "demon"}], {"dataset_revision": "v1.0.0"},
         "datasets[0] (FOLDER@v1.0.0:demon): FOLDER is a local folder; a revision pins a Hub repository"),
        ([{"name": "demon"}], {"filter_min_score": 100.0},
         "the mixture has no rows left to train on (check the filters and the configs)"),
    ],
)  # fmt: skip
def test_bad_mixtures_get_one_clear_line(folder: Path, entries: list, options: dict, message: str) -> None:
    config = MixtureConfig(datasets=[{"path": str(folder), **entry} for entry in entries], **options)
    with pytest.raises(MixtureError) as raised:
        load_mixture(config)
    assert str(raised.value) == message.replace("FOLDER", str(folder))


def test_a_missing_dataset_is_named(tmp_path: Path) -> None:
    with pytest.raises(MixtureError, match=r"^datasets\[0\] \(.*nowhere:prefix\): no dataset at '.*nowhere'$"):
        load_mixture(MixtureConfig(datasets=[{"path": str(tmp_path / "nowhere"), "name": "prefix"}]))


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda path: path.stem)
@pytest.mark.slow
def test_recipes_name_real_configs_at_the_paper_defaults(recipe: Path, tmp_path: Path, monkeypatch) -> None:
    """Every recipe parses with TRL's parser, and its mixture loads from a folder holding all six configs, every
    row of each config it names."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # read once, at import
    monkeypatch.syspath_prepend(str(RECIPES.parent))
    from dpo import make_parser

    sizes = dict(zip(PAPER, (12, 10, 8, 12, 6, 9), strict=True))  # unequal: a fraction would cap them
    six = write_folder(tmp_path / "six", sizes)
    card = yaml.safe_load((six / "README.md").read_text().split("---")[1])  # and `all`, as a build's card has
    card["configs"].append({"config_name": "all", "data_files": [
        {"split": "train", "path": [f"data/{name}/*.parquet" for name in PAPER]}]})  # fmt: skip
    (six / "README.md").write_text("---\n" + yaml.safe_dump(card) + "---\n")
    _, training_args, _, mixture_args, _ = make_parser().parse_args_and_config(
        ["--config", str(recipe), "--output_dir", str(tmp_path / "out"), "--use_cpu", "--bf16", "false"]
    )
    beta = 0.1 if recipe.stem in ("dlma", "clair-apo") else 0.01  # DLMA's and APO's recipes: their papers' beta
    assert (training_args.beta, training_args.learning_rate, training_args.num_train_epochs) == (beta, 5e-7, 1.0)
    assert training_args.max_length == 2048
    names = [entry.name for entry in mixture_args.datasets]
    assert names and set(names) <= {*PAPER, "all"}
    for entry in mixture_args.datasets:
        entry.path = str(six)
    mixture_args.dataset_revision = None
    strategies = load_mixture(mixture_args).splits["train"]["strategy"]
    names = list(PAPER) if names == ["all"] else names  # `all`: every pair of every strategy
    assert sorted(set(strategies)) == sorted(names)
    halved = "elicitive" if mixture_args.filter_require_reasoning else None  # reasoning on even rows only
    expected = {name: (sizes[name] + 1) // 2 if name == halved else sizes[name] for name in names}
    assert {name: strategies.count(name) for name in names} == expected  # every row (that the filters keep)


def test_curriculum_trains_in_stages_ranked_within_each_config(folder: Path) -> None:
    entries = [{"path": str(folder), "name": "prefix"}, {"path": str(folder), "name": "refine"}]
    rows = load_mixture(MixtureConfig(datasets=entries, curriculum=True, curriculum_stages=2)).splits["train"]
    assert len(rows) == 46 and "curriculum_stage" not in rows.column_names
    strategies, ids = rows["strategy"], [int(i.split("-")[1]) for i in rows["prompt_id"]]
    # the easy half of each config (largest per-token score: the first rows), then the hard half
    stage = [i >= {"prefix": 20, "refine": 3}[name] for name, i in zip(strategies, ids, strict=True)]
    assert stage == sorted(stage) and stage.count(False) == 23
    assert set(strategies[:23]) == {"prefix", "refine"}  # each stage mixes the configs
    first = load_mixture(MixtureConfig(datasets=entries, curriculum=True, curriculum_stages=2)).splits["train"]
    assert first["prompt_id"] == rows["prompt_id"]  # seeded: the same order again


def test_curriculum_by_a_judges_margin_ranks_within_each_config(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    folder = write_folder(tmp_path / "judged", {"prefix": 10, "refine": 6}, judged=True)
    entries = [{"path": str(folder), "name": "prefix"}, {"path": str(folder), "name": "refine"}]
    options = {"curriculum": True, "curriculum_stages": 2, "curriculum_by": "judge_margin"}
    rows = load_mixture(MixtureConfig(datasets=entries, **options)).splits["train"]
    # the larger half of each config's margins first: margin (7 i) % size, so not the order of the scores
    easy = {"prefix": {i for i in range(10) if 7 * i % 10 >= 5}, "refine": {i for i in range(6) if 7 * i % 6 >= 3}}
    stage = [int(pid.split("-")[1]) not in easy[name] for name, pid in zip(rows["strategy"], rows["prompt_id"],
                                                                          strict=True)]  # fmt: skip
    assert stage == sorted(stage) and stage.count(False) == 8 and set(rows["strategy"][:8]) == {"prefix", "refine"}
    assert rows["score_per_token"] != sorted(rows["score_per_token"], reverse=True)


@pytest.mark.slow
def test_curriculum_by_judged_accuracy_puts_the_most_agreed_strategies_first(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    sizes = {"prefix": 12, "demon": 12, "refine": 12}  # accuracies 6/12, 8/12, 9/12
    folder = write_folder(tmp_path / "judged", sizes, judged=True)
    entries = [{"path": str(folder), "name": name} for name in sizes]
    options = {"curriculum": True, "curriculum_stages": 3, "curriculum_by": "judge_accuracy"}
    strategies = load_mixture(MixtureConfig(datasets=entries, **options)).splits["train"]["strategy"]
    assert strategies == ["refine"] * 12 + ["demon"] * 12 + ["prefix"] * 12
    unjudged = [{"path": str(write_folder(tmp_path / "plain", {"prefix": 4})), "name": "prefix"}]
    with pytest.raises(MixtureError, match=r"curriculum by judge_margin needs a judge's margin on every row: run"):
        load_mixture(MixtureConfig(datasets=unjudged, curriculum=True, curriculum_by="judge_margin"))
    with pytest.raises(MixtureError, match=r"curriculum by judge_accuracy needs judged pairs of prefix$"):
        load_mixture(MixtureConfig(datasets=unjudged, curriculum=True, curriculum_by="judge_accuracy"))
    with pytest.raises(MixtureError, match=r"^curriculum_by: expected one of score, judge_margin, judge_accuracy, got"):
        load_mixture(MixtureConfig(datasets=entries, curriculum=True, curriculum_by="length"))


def test_a_missing_config_says_why_and_can_be_skipped(folder: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = {"configs": {"prefix": {"rows": 40, "dropped": {}}, "nparam": {"rows": 0, "dropped": {"truncated": 3,
                "near-copy": 1}}}}  # fmt: skip
    (folder / "popalign_build.json").write_text(json.dumps(manifest))
    entries = [{"path": str(folder), "name": "nparam"}, {"path": str(folder), "name": "leaderboard"}]
    with pytest.raises(MixtureError) as raised:
        load_mixture(MixtureConfig(datasets=entries[:1]))
    reason = "no config 'nparam': all 4 pairs were dropped (3 as truncated and 1 as near-copy)"
    assert str(raised.value) == f"datasets[0] ({folder}:nparam): {reason} (skip it with skip_missing: true)"
    mixed = load_mixture(MixtureConfig(datasets=[*entries, {"path": str(folder), "name": "demon"}], skip_missing=True))
    assert set(mixed.splits["train"]["strategy"]) == {"demon"}
    warnings = capsys.readouterr().err.splitlines()
    assert warnings[0] == f"warning: skipping datasets[0] ({folder}:nparam): {reason}"
    assert warnings[1].startswith(f"warning: skipping datasets[1] ({folder}:leaderboard): no config 'leaderboard': ")
    assert "did not run that strategy" in warnings[1]


def test_curriculum_needs_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    unscored = Dataset.from_list(
        [
            make_row(
                strategy="prefix",
                prompt=[{"role": "user", "content": "q"}],
                prompt_id="p",
                chosen="a",
                rejected="b",
                chosen_model="m",
                rejected_model="m",
            )
        ],
        features=features(),
    )
    target = tmp_path / "plain" / "data" / "prefix" / "train-00000-of-00001.parquet"
    target.parent.mkdir(parents=True)
    unscored.to_parquet(str(target))
    with pytest.raises(MixtureError, match="a curriculum by score needs a per-token self-reward score on every row"):
        load_mixture(
            MixtureConfig(datasets=[{"path": str(tmp_path / "plain"), "data_files": str(target)}], curriculum=True)
        )


def test_a_mixture_with_one_answer_on_both_sides_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = write_folder(tmp_path / "shared", {"nparam": 3, "refine": 3})
    entries = [{"path": str(folder), "name": "nparam"}, {"path": str(folder), "name": "refine"}]
    load_mixture(MixtureConfig(datasets=entries))
    assert "warning" not in capsys.readouterr().err  # write_folder's chosen sides differ row to row
    table = folder / "data" / "refine" / "train-00000-of-00001.parquet"
    rows = Dataset.from_parquet(str(table)).to_list()
    nparam = Dataset.from_parquet(str(folder / "data" / "nparam" / "train-00000-of-00001.parquet")).to_list()
    rows[1] = rows[1] | {"prompt_id": nparam[1]["prompt_id"], "rejected": nparam[1]["chosen"]}  # shared M(q)
    Dataset.from_list(rows, features=features()).to_parquet(str(table))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache-2")  # not the first load's
    load_mixture(MixtureConfig(datasets=entries))
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warning.startswith("warning: the mixture holds 1 answers as chosen in one pair and as rejected in another")


def test_flags_apply_leaves_out_bad_pairs_and_swaps_sides_of_a_local_build(folder: Path) -> None:
    """`flags: apply` trains on a local build as its readers left it (`popalign review`); `ignore` (the default) on
    the pairs as built."""
    shard = folder / "data" / "refine" / "train-00000-of-00001.parquet"
    rows = {row["prompt_id"]: row for row in Dataset.from_parquet(str(shard)).to_list()}
    write_flags(folder, Flags([
        Flag("ana", "refine", "refine-1", pair_digest(rows["refine-1"]), "bad"),
        Flag("ana", "refine", "refine-2", pair_digest(rows["refine-2"]), "swapped"),
    ]))  # fmt: skip
    entry = {"path": str(folder), "name": "refine"}
    mixture = load_mixture(MixtureConfig(datasets=[entry], flags="apply"))
    applied = mixture.splits["train"].to_list()
    assert (
        mixture.describe()[0] == f"mixture {folder}:refine: 5 of 5 rows; readers' flags applied: 1 left out, 1 swapped"
    )
    by_id = {row["prompt_id"]: row for row in applied}
    assert len(applied) == 5 and "refine-1" not in by_id
    assert by_id["refine-2"]["chosen"] == rows["refine-2"]["rejected"] and by_id["refine-2"]["swapped"]
    assert len(load_mixture(MixtureConfig(datasets=[entry])).splits["train"]) == 6
    with pytest.raises(MixtureError, match="flags: expected one of ignore, apply, got 'yes'"):
        load_mixture(MixtureConfig(datasets=[entry], flags="yes"))
