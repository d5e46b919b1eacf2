"""``learndrop bench``: training methods against full training and its budget frontier.

One job per module:

- :mod:`~learndrop.bench.plan`: which runs (methods, budget runs, A/A control, depth check),
  their configurations and lockstep groups;
- :mod:`~learndrop.bench.lockstep`: the scheduler (one epoch of each run in turn);
- :mod:`~learndrop.bench.trainer_run`: the trainer adapted to it (where issue 12's epoch API
  plugs in);
- :mod:`~learndrop.bench.frontier`: the budget frontier (pure functions);
- :mod:`~learndrop.bench.report`: costs, margins, noise floor, ``bench.json`` / ``bench.md``;
- :mod:`~learndrop.bench.plots`: ``accuracy_vs_flops.png``, ``accuracy_vs_time.png``;
- :mod:`~learndrop.bench.run`: :func:`run_bench`, which ties them together.

Argument parsing stays in :mod:`learndrop.cli`; see docs/bench.md.
"""

from learndrop.bench.frontier import build_frontier, compare, frontier_accuracy
from learndrop.bench.lockstep import EpochRun, run_lockstep
from learndrop.bench.plan import (
    RunSpec,
    Variant,
    budget_epochs,
    parse_budgets,
    parse_methods,
    parse_seeds,
    parse_variant,
    plan_bench,
)
from learndrop.bench.plots import plot_bench
from learndrop.bench.report import BENCH_JSON, BENCH_MD, aggregate, machine_info, write_report
from learndrop.bench.run import DEFAULT_BUDGETS, prune_checkpoints, run_bench
from learndrop.bench.trainer_run import TrainerRun

__all__ = [
    "BENCH_JSON", "BENCH_MD", "DEFAULT_BUDGETS", "EpochRun", "RunSpec", "TrainerRun", "Variant",
    "aggregate", "budget_epochs", "build_frontier", "compare", "frontier_accuracy",
    "machine_info", "parse_budgets", "parse_methods", "parse_seeds", "parse_variant",
    "plan_bench", "plot_bench", "prune_checkpoints", "run_bench", "run_lockstep", "write_report",
]
