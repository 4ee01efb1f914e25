"""``al-connector simulate``: does active learning pay off on this data, and with what?

Writes ``simulation.json`` (schema in docs/simulate.md) and ``simulation.png`` (mean
accuracy curves with their spread over seeds) into ``--out``, and prints a table; with
``--recommend``, also ``recommendation.md``: which strategy to run, with the evidence.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from connector.contracts.errors import ConfigError
from connector.files import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from rich.table import Table

# The simulation, the model and numpy are imported when the command runs: registering the
# command (every `al-connector ... --help`) must not load torch.


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in _csv_list(text))
    except ValueError:
        raise click.BadParameter(
            f"seeds must be integers separated by commas, got {text!r}"
        ) from None


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """Mean test accuracy against labels per strategy, shaded between min and max seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for row in result["summary"]:
        runs = [r for r in result["runs"] if r["strategy"] == row["strategy"]]
        n = min(len(r["labels"]) for r in runs)
        x = np.asarray(runs[0]["labels"][:n])
        acc = np.asarray([r["accuracy"][:n] for r in runs])
        label = f"{row['strategy']} (AUBC {row['aubc_mean']:.3f})"
        (line,) = ax.plot(x, acc.mean(0), marker="o", markersize=3, label=label)
        ax.fill_between(x, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.15)
    fulls = [s["full_data"]["accuracy"] for s in result["seeds"] if s["full_data"]]
    if fulls:
        ax.axhline(float(np.mean(fulls)), color="grey", ls="--", lw=1, label="all labels")
    ax.set_xlabel("labels")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{Path(result['dataset']['source']).name}: {len(result['seeds'])} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, fig.savefig)
    plt.close(fig)


def write_json(result: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(result, indent=1, sort_keys=False) + "\n")


def summary_table(result: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(title="active learning simulation (mean over seeds)")
    for col in ("strategy", "AUBC", "±", "final acc", "labels→90%", "labels→95%", "select s"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    best = max(r["aubc_mean"] for r in result["summary"])
    for r in result["summary"]:

        def reach(pct: int, row: dict[str, Any] = r) -> str:
            mean = row[f"labels_to_{pct}_mean"]
            got = row[f"labels_to_{pct}_reached"]
            txt = "-" if mean is None else f"{mean:.0f}"
            return txt if got == row["n_seeds"] else f"{txt} ({got}/{row['n_seeds']})"

        name = f"[bold]{r['strategy']}[/]" if r["aubc_mean"] == best else r["strategy"]
        table.add_row(
            name,
            f"{r['aubc_mean']:.4f}",
            f"{r['aubc_std']:.4f}",
            f"{r['final_accuracy_mean']:.3f}",
            reach(90),
            reach(95),
            f"{r['select_seconds_mean']:.4f}",
        )
    return table


@click.command("simulate")
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--strategies",
    "-s",
    default=None,
    help="Comma-separated registry names, with parameters as name:key=value:key=value. "
    "[default: random,entropy,margin; with --recommend: random, entropy, margin, "
    "least_confidence, badge, coreset]",
)
@click.option(
    "--recommend",
    "recommend_",
    is_flag=True,
    help="Choose a strategy for this data: the best mean AUBC among those that lost to "
    "random on no seed; writes recommendation.md with the evidence (random is always run).",
)
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--initial", default=20, show_default=True, help="Labels before the first round.")
@click.option(
    "--cold-start",
    default="random",
    show_default=True,
    help="How the initial labels are chosen: random, kmeans, typiclust, coreset.",
)
@click.option("--batch", "-b", default=10, show_default=True, help="Labels added per round.")
@click.option("--budget", default=200, show_default=True, help="Total labels at the end.")
@click.option(
    "--test-fraction",
    default=0.2,
    show_default=True,
    help="Share of the items in the random validation split: the test set (never selected).",
)
@click.option(
    "--arch",
    default="small_cnn",
    show_default=True,
    help="small_cnn or a torchvision architecture (resnet18, ...); a wrong name lists them.",
)
@click.option("--weights", default=None, help="torchvision weights name or local weights file.")
@click.option("--freeze-backbone", is_flag=True, help="Train only the head.")
@click.option("--image-size", default=32, show_default=True, help="Images are resized to this.")
@click.option("--width", default=32, show_default=True, help="Base filters of small_cnn.")
@click.option("--ensemble-size", default=1, show_default=True)
@click.option("--epochs", type=int, default=None, help="Default: adapted to the labeled set.")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: the trainer's).")
@click.option(
    "--mc-samples",
    type=int,
    default=None,
    help="MC-dropout samples (default: 20 for disagreement strategies such as bald, 1 otherwise).",
)
@click.option(
    "--max-candidates",
    type=int,
    default=None,
    help="Score a random subset of this many unlabeled items per round.",
)
@click.option(
    "--semi-supervised",
    "semi_modes",
    default="none",
    show_default=True,
    help="Training on the unlabeled pool: none, fixmatch, or both (none,fixmatch) to run "
    "each strategy in each mode (named strategy+fixmatch) and compare them, --recommend "
    "included.",
)
@click.option(
    "--semi-threshold",
    type=float,
    default=None,
    help="FixMatch: confidence a pseudo-label needs (default: model.semi_threshold's).",
)
@click.option(
    "--pretrain",
    type=click.Choice(["none", "simclr", "simclr_gray"]),
    default="none",
    show_default=True,
    help="Self-supervised pre-training of the backbone on the unlabeled pool, as "
    "model.pretrain does in the daemon (simclr_gray for grayscale images).",
)
@click.option(
    "--pretrain-every-rounds",
    type=int,
    default=None,
    help="Pre-train again after this many rounds (default: model.pretrain_every_rounds's).",
)
@click.option(
    "--no-full-data", is_flag=True, help="Skip the all-labels model (no labels-to-90/95% figures)."
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    help="Processes (one torch thread each) running seeds and strategies.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("simulation"),
    show_default=True,
    help="Folder for simulation.json and simulation.png.",
)
def simulate_cmd(
    dataset: Path,
    strategies: str | None,
    recommend_: bool,
    seeds: str,
    initial: int,
    cold_start: str,
    batch: int,
    budget: int,
    test_fraction: float,
    arch: str,
    weights: str | None,
    freeze_backbone: bool,
    image_size: int,
    width: int,
    ensemble_size: int,
    epochs: int | None,
    lr: float | None,
    mc_samples: int | None,
    max_candidates: int | None,
    semi_modes: str,
    semi_threshold: float | None,
    pretrain: str,
    pretrain_every_rounds: int | None,
    no_full_data: bool,
    workers: int,
    out_dir: Path,
) -> None:
    """Simulate active learning on an already-labeled DATASET (ImageFolder tree or CSV).

    Reports, per strategy and seed, the test-accuracy curve against the number of
    labels, AUBC (normalised area under that curve), the labels needed to reach 90% and
    95% of the all-labels accuracy, and selection time.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from connector.learning.model import ModelSpec
    from connector.learning.selfsup import PretrainConfig
    from connector.learning.semi import SemiConfig
    from connector.learning.training import TrainConfig
    from connector.simulation import SimulationConfig, count_work, load_dataset, run_simulation
    from connector.simulation.modes import merge_modes
    from connector.simulation.recommend import CANDIDATES, recommend, recommendation_markdown

    names = _csv_list(strategies or ("" if recommend_ else "random,entropy,margin"))
    if recommend_:
        names = names or CANDIDATES
        names = names if "random" in names else ("random", *names)
    try:
        spec = ModelSpec(
            arch=arch,
            weights=weights,
            freeze_backbone=freeze_backbone,
            image_size=image_size,
            width=width,
            ensemble_size=ensemble_size,
        )
        cfg = SimulationConfig(
            strategies=names,
            seeds=_seeds(seeds),
            initial=initial,
            cold_start=cold_start,
            batch=batch,
            budget=budget,
            test_fraction=test_fraction,
            spec=spec,
            train=TrainConfig(epochs=epochs) if lr is None else TrainConfig(epochs=epochs, lr=lr),
            mc_samples=mc_samples,
            max_candidates=max_candidates,
            full_data=not no_full_data,
            workers=workers,
            pretraining=PretrainConfig(
                pretext=pretrain,  # type: ignore[arg-type]  # click.Choice checked it
                every_rounds=(
                    PretrainConfig.every_rounds
                    if pretrain_every_rounds is None
                    else pretrain_every_rounds
                ),
            ),
        )
        semi_extra = {} if semi_threshold is None else {"threshold": semi_threshold}
        modes = _csv_list(semi_modes) or ("none",)
        configs = {m: replace(cfg, semi=SemiConfig(mode=m, **semi_extra)) for m in modes}  # type: ignore[arg-type]
        data = load_dataset(dataset)
    except (ConfigError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    console = Console(stderr=True)
    n_pool = round(len(data.paths) * (1 - test_fraction))
    trains, rounds = count_work(cfg, n_pool)
    rounds *= len(configs)
    console.print(
        f"{len(data.paths)} images, {len(data.classes)} classes; {len(cfg.strategies)} "
        f"strategies x {len(cfg.seeds)} seeds x training {', '.join(modes)}, "
        f"{cfg.initial} -> {cfg.budget} labels by {cfg.batch}"
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("simulating", total=trains + rounds)
        results = {}
        for i, (mode, mode_cfg) in enumerate(configs.items()):
            # the all-labels model is supervised in every mode: trained once, in the first
            run_cfg = mode_cfg if i == 0 else replace(mode_cfg, full_data=False)
            results[mode] = run_simulation(data, run_cfg, progress=lambda _e: bar.advance(task))
        result = results[modes[0]] if len(results) == 1 else merge_modes(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    if recommend_:
        result["recommendation"] = recommend(result)
    write_json(result, out_dir / "simulation.json")
    plot_curves(result, out_dir / "simulation.png")
    Console().print(summary_table(result))
    click.echo(f"wrote {out_dir / 'simulation.json'} and {out_dir / 'simulation.png'}")
    if recommend_:
        page = recommendation_markdown(result["recommendation"], str(dataset))
        atomic_write_text(out_dir / "recommendation.md", page)
        click.echo(page)
        click.echo(f"wrote {out_dir / 'recommendation.md'}")
