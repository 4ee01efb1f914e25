"""``al-connector simulate``: datasets, metrics, the engine, the command, and the sanity check."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from connector.cli.simulate import simulate_cmd
from connector.contracts.errors import ConfigError
from connector.devtools.datasets import write_digits
from connector.learning.model import ModelSpec
from connector.learning.training import TrainConfig
from connector.simulation import (
    SCHEMA,
    SimulationConfig,
    aubc,
    labels_to_reach,
    load_dataset,
    parse_strategy,
    run_simulation,
    sharp_drops,
)
from connector.simulation.recommend import CANDIDATES, recommend

TINY = SimulationConfig(
    strategies=("random", "margin", "coreset"),
    seeds=(0,),
    initial=20,
    batch=10,
    budget=40,
    spec=ModelSpec(image_size=16, width=8),
    train=TrainConfig(min_steps=8, max_steps=20),
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits-if")
    write_digits(root, limit=150, layout="imagefolder", seed=1)
    return root


def test_load_imagefolder_and_csv(small_folder: Path, tmp_path: Path) -> None:
    ds = load_dataset(small_folder)
    assert ds.classes == tuple(str(i) for i in range(10))
    assert len(ds.paths) == 150 and len(ds.labels) == 150
    assert all(ds.paths[i].parent.name == ds.classes[ds.labels[i]] for i in range(150))
    flat = tmp_path / "flat"
    write_digits(flat, limit=30, layout="flat")
    csv_ds = load_dataset(flat / "labels.csv")
    assert len(csv_ds.paths) == 30 and all(p.exists() for p in csv_ds.paths)
    assert load_dataset(flat).source.endswith("labels.csv")


def test_bad_datasets_and_settings_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ImageFolder"):
        load_dataset(tmp_path)
    with pytest.raises(
        ConfigError, match=r"unknown strategy 'no_such_strategy'\. Set --strategies"
    ):
        SimulationConfig(strategies=("no_such_strategy",))
    with pytest.raises(ConfigError, match="budget >= initial"):
        SimulationConfig(initial=50, budget=20)
    assert parse_strategy("power:base=bald:beta=2") == ("power", {"base": "bald", "beta": 2})


def test_aubc_is_the_normalised_trapezoid() -> None:
    assert aubc([20, 30, 40], [0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert aubc([20, 30, 50], [0.5, 0.7, 0.9]) == pytest.approx((6 + 16) / 30)
    assert aubc([20], [0.8]) == 0.8
    assert labels_to_reach([20, 30, 40], [0.5, 0.7, 0.9], 0.7) == 30
    assert labels_to_reach([20, 30], [0.5, 0.6], 0.7) is None


def test_sharp_drops_count_falls_of_more_than_004_between_rounds() -> None:
    assert sharp_drops([0.80, 0.90, 0.85, 0.86, 0.70, 0.75]) == 2
    assert sharp_drops([0.9, 0.87, 0.9]) == 0  # noise of a small test set
    assert sharp_drops([0.9]) == 0


def test_simulation_result_schema_and_test_split_isolation(small_folder: Path) -> None:
    ds = load_dataset(small_folder)
    res = run_simulation(ds, TINY)
    assert res["schema"] == SCHEMA
    assert [r["strategy"] for r in res["runs"]] == list(TINY.strategies)
    seed = res["seeds"][0]
    assert seed["n_pool"] + seed["n_test"] == 150 and seed["full_data"]["n_labels"] == 120
    for run in res["runs"]:
        assert run["labels"] == [20, 30, 40]
        assert len(run["accuracy"]) == 3 and len(run["select_seconds"]) == 2
        assert 0.0 <= run["aubc"] <= 1.0
        assert len(set(run["selected"])) == 20
    # One engine, paired runs: every strategy of a seed shares the validation split (the
    # test set) and the initial model, and never selects a validation item.
    splits = {tuple(r["validation"]) for r in res["runs"]}
    assert len(splits) == 1 and len(splits.pop()) == seed["n_test"] == 30
    assert len({r["accuracy"][0] for r in res["runs"]}) == 1
    val = set(res["runs"][0]["validation"])
    assert all(not set(r["selected"]) & val for r in res["runs"])
    assert {row["strategy"] for row in res["summary"]} == set(TINY.strategies)
    json.dumps(res)  # JSON-ready


@pytest.mark.slow
def test_parallel_workers_give_the_same_result(small_folder: Path) -> None:
    ds = load_dataset(small_folder)
    cfg = replace(TINY, strategies=("random", "margin"), full_data=False)
    inline = run_simulation(ds, cfg)
    parallel = run_simulation(ds, replace(cfg, workers=2))
    for a, b in zip(inline["runs"], parallel["runs"], strict=True):
        assert a["selected"] == b["selected"]
        np.testing.assert_allclose(a["accuracy"], b["accuracy"])


def test_cli_writes_json_plot_and_table(small_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = [
        str(small_folder), "--strategies", "random,entropy", "--seeds", "0",
        "--budget", "30", "--image-size", "16", "--width", "8", "--epochs", "2",
        "--cold-start", "kmeans", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(simulate_cmd, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "simulation.json").read_text())
    assert data["config"]["cold_start"] == "kmeans"
    assert (out / "simulation.png").read_bytes()[:4] == b"\x89PNG"
    assert "AUBC" in result.output and "entropy" in result.output


def test_cli_rejects_unknown_strategy(small_folder: Path) -> None:
    result = CliRunner().invoke(simulate_cmd, [str(small_folder), "--strategies", "nope"])
    assert result.exit_code == 2
    assert "unknown strategy 'nope'" in result.output


def _fake_run(strategy: str, seed: int, accuracy: list[float]) -> dict[str, object]:
    labels = [20 + 10 * i for i in range(len(accuracy))]
    return {
        "strategy": strategy, "seed": seed, "labels": labels, "accuracy": accuracy,
        "aubc": aubc(labels, accuracy), "final_accuracy": accuracy[-1],
    }  # fmt: skip


def test_badge_runs_through_the_round_engine(small_folder: Path) -> None:
    """BADGE's per-item score needs embeddings, also for the report's labeled sample (the
    engine scored that sample without them, and every BADGE round failed at SELECT)."""
    cfg = replace(TINY, strategies=("badge",), budget=30, full_data=False)
    res = run_simulation(load_dataset(small_folder), cfg)
    assert res["runs"][0]["labels"] == [20, 30]


def test_recommend_never_picks_a_strategy_that_lost_to_random_on_a_seed() -> None:
    runs = [
        _fake_run("random", 0, [0.5, 0.6, 0.7]),
        _fake_run("random", 1, [0.5, 0.6, 0.7]),
        # the best mean, but worse than random on seed 1: not recommended
        _fake_run("entropy", 0, [0.5, 0.9, 0.95]),
        _fake_run("entropy", 1, [0.5, 0.55, 0.65]),
        _fake_run("margin", 0, [0.5, 0.7, 0.75]),
        _fake_run("margin", 1, [0.5, 0.65, 0.7]),
    ]
    rec = recommend({"runs": runs})
    assert rec["strategy"] == "margin"
    assert rec["settings"] == '[strategy]\nname = "margin"'
    by = {r["strategy"]: r for r in rec["evidence"]}
    assert by["entropy"]["seeds_lost_to_random"] == [1]
    assert by["margin"]["seeds_lost_to_random"] == []
    assert by["margin"]["labels_to_random_final"] == {"0": 30, "1": 40}
    assert by["entropy"]["labels_to_random_final"]["1"] is None
    assert rec["evidence"][0]["strategy"] == "entropy"  # best mean first, as evidence
    # when every strategy lost somewhere, say so: random
    rec = recommend({"runs": runs[:4]})
    assert rec["strategy"] == "random" and "did not pay off" in rec["reason"]
    with pytest.raises(ValueError, match="needs random"):
        recommend({"runs": runs[2:]})


def test_cli_recommend_writes_the_choice_and_always_runs_random(
    small_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rec"
    args = [
        str(small_folder), "--recommend", "--strategies", "margin", "--seeds", "0,1",
        "--budget", "30", "--image-size", "16", "--width", "8", "--epochs", "2",
        "--no-full-data", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(simulate_cmd, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "simulation.json").read_text())
    assert data["config"]["strategies"] == ["random", "margin"]
    rec = data["recommendation"]
    assert rec["strategy"] in ("random", "margin")
    page = (out / "recommendation.md").read_text()
    assert f"Use **{rec['strategy']}**" in page and "lost to random" in page
    assert "recommendation.md" in result.output


def test_recommend_candidates_are_registered() -> None:
    for name in CANDIDATES:
        parse_strategy(name)
    assert SimulationConfig(strategies=CANDIDATES).strategies[0] == "random"


@pytest.mark.slow
def test_margin_beats_random_and_entropy_ties_it_on_digits(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The sanity check, on all 1,797 digits, averaged over 3 seeds.

    Paired design: per seed, every strategy starts from the same test split, the same 20
    random labels and the same initial model; 10 rounds of 10 labels follow (20 -> 120).

    Margin beats random clearly (+0.020 here). Entropy ties random on the digits
    (issue 15: 0.934 against 0.932 over 20 -> 200): which of the two is ahead is decided
    by the last bits of the float math, so it flips between machines (-0.0003 on the
    development machine, ahead on CI's before). So the test asks that entropy tie or win
    (lose by no more than 0.005) and that margin win by more than 0.01.
    """
    root = tmp_path_factory.mktemp("digits-all")
    write_digits(root, layout="imagefolder")
    cfg = SimulationConfig(
        strategies=("random", "entropy", "margin"),
        seeds=(0, 1, 2),
        budget=120,
        spec=ModelSpec(image_size=16, width=16),
        full_data=False,
        workers=2,
    )
    res = run_simulation(load_dataset(root), cfg)
    mean = {row["strategy"]: row["aubc_mean"] for row in res["summary"]}
    assert mean["margin"] > mean["random"] + 0.01, mean
    assert mean["entropy"] > mean["random"] - 0.005, mean
