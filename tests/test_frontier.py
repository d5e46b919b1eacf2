"""The budget frontier and the bench report's numbers, from fake summaries (no training)."""

import copy

import pytest

from learndrop.bench.frontier import (
    CHEAPER,
    COSTLIER,
    INSIDE,
    build_frontier,
    compare,
    frontier_accuracy,
    verdict,
)
from learndrop.bench.report import (
    aggregate,
    bench_markdown,
    machine_info,
    merge_plans,
    shown_epochs,
)

TFLOP = 1e12


def test_frontier_interpolates_between_the_seed_means():
    # Two seeds per budget: the points are the means, sorted by cost.
    frontier = build_frontier([(1.0, 8.0, 0.86), (0.5, 4.0, 0.80), (0.25, 2.0, 0.70),
                               (1.0, 8.0, 0.88), (0.5, 4.0, 0.82), (0.25, 2.0, 0.72)])
    assert [(p.budget, p.cost, p.seeds) for p in frontier] == [(0.25, 2.0, 2), (0.5, 4.0, 2),
                                                               (1.0, 8.0, 2)]
    assert [p.acc for p in frontier] == pytest.approx([0.71, 0.81, 0.87])
    assert frontier[0].acc_std == pytest.approx(0.01414, abs=1e-4)
    assert frontier_accuracy(frontier, 3.0) == pytest.approx(0.76)   # halfway 0.71 -> 0.81
    assert frontier_accuracy(frontier, 7.0) == pytest.approx(0.855)  # 3/4 of 0.81 -> 0.87
    assert frontier_accuracy(frontier, 4.0) == pytest.approx(0.81)
    assert frontier_accuracy(frontier, 8.0) == pytest.approx(0.87)
    assert frontier_accuracy(frontier, 8.0 * (1 + 1e-12)) == pytest.approx(0.87)  # rounding
    # Never extrapolated.
    assert frontier_accuracy(frontier, 1.9) is None
    assert frontier_accuracy(frontier, 8.1) is None
    assert frontier_accuracy([], 3.0) is None


def test_a_slowed_seed_does_not_move_the_frontier():
    # Time ratios of three seeds, one of them slowed by other load: the point sits at the median.
    frontier = build_frontier([(0.5, 0.53, 0.63), (0.5, 1.21, 0.64), (0.5, 0.51, 0.62),
                               (1.0, 1.0, 0.75), (1.0, 1.0, 0.74), (1.0, 1.0, 0.75)])
    assert [p.cost for p in frontier] == [0.53, 1.0]
    assert frontier[0].acc == pytest.approx(0.63)


def test_compare_and_verdict_say_above_below_and_outside():
    frontier = build_frontier([(1.0, 8.0, 0.86), (0.5, 4.0, 0.80)])
    above = compare(frontier, 6.0, 0.85)
    assert (above.frontier_acc, above.position) == (pytest.approx(0.83), INSIDE)
    assert above.margin == pytest.approx(0.02)
    below = compare(frontier, 6.0, 0.81)
    assert below.margin == pytest.approx(-0.02)
    cheap, dear = compare(frontier, 3.0, 0.9), compare(frontier, 9.0, 0.9)
    assert (cheap.margin, cheap.position) == (None, CHEAPER)
    assert (dear.margin, dear.position) == (None, COSTLIER)
    assert verdict([0.02, 0.01]) == "above"
    assert verdict([-0.02]) == "below"
    assert verdict([0.01, -0.005]) == "above (within the seed spread)"
    assert verdict([None, -0.02]) == "below (1 seed(s) outside the frontier's range)"
    assert verdict([None]) == "outside the frontier's range"
    with pytest.raises(ValueError, match="finite"):
        build_frontier([(0.5, float("nan"), 0.8)])


def _summary(method, acc, tflop, time_s, cpu_s, units_dropped=0, **extra):
    flops = tflop * TFLOP
    # As the ledger reports them: fwd_flops holds the method's extra forward passes too.
    return {"method": method, "model": "resnet20", "epochs": 8, "final_test_acc": acc,
            "fwd_flops": flops / 3 + extra.get("extra_fwd_flops", 0), "bwd_flops": 2 * flops / 3,
            "fwd_flops_full": 8 * TFLOP / 3,
            "bwd_flops_full": 16 * TFLOP / 3, "train_time_s": time_s, "train_cpu_s": cpu_s,
            "units_total": 7, "units_dropped": units_dropped, "params_initial": 270_000,
            "params_final": 270_000, **extra}


def _curve(accs, time_s):
    """Metrics rows: one per epoch, equal time and FLOPs per epoch."""
    n = len(accs)
    return [{"epoch": i + 1, "test_acc": a, "time_s": time_s * (i + 1) / n,
             "cpu_s": time_s * (i + 1) / n / 2, "fwd_flops": (i + 1) / n * TFLOP,
             "bwd_flops": (i + 1) / n * 2 * TFLOP} for i, a in enumerate(accs)]


@pytest.fixture
def fake_bench():
    """Two seeds: full (8 TFLOP, 100 s), budgets 0.25 / 0.5, a method above the frontier, one
    below it, one cheaper than every budget, one with extra FLOPs beyond full's, the copies of
    Learn&Drop's run and the A/A control."""
    runs = {}
    for seed, jitter in ((0, 0.0), (1, 0.01)):
        def add(label, summary, accs=(0.5, 0.7, 0.8), seed=seed):
            runs[(label, seed)] = {"summary": summary, "metrics": _curve(accs, 10)}
        add("full", _summary("full", 0.86 + jitter, 8, 100, 50), (0.5, 0.8, 0.85 + jitter,
                                                                  0.86 + jitter))
        add("full-b0.5", _summary("full", 0.80 + jitter, 4, 50, 25))
        add("full-b0.25", _summary("full", 0.70 + jitter, 2, 25, 12.5))
        add("learndrop", _summary("learndrop", 0.85 + jitter, 6, 60, 30, 3),
            (0.5, 0.849 + jitter, 0.85 + jitter))
        add("freezeout", _summary("freezeout", 0.80 + jitter, 6, 75, 37.5))
        add("stochastic-depth", _summary("stochastic-depth", 0.5, 1, 10, 5))
        add("heavy", _summary("learndrop", 0.87, 7, 90, 45, extra_fwd_flops=2 * TFLOP))
        # Runs after learndrop: its times are against the A/A control, timed alongside it.
        add("random-drop", _summary("random-drop", 0.83 + jitter, 6, 66, 33, 3))
        add("full-aa", _summary("full", 0.86 + jitter, 8, 110, 51))
    return runs


def test_report_from_fake_summaries(fake_bench):
    report = aggregate(fake_bench)
    rows, flops = report["rows"], report["frontier"]["flops"]
    assert [p["budget"] for p in flops] == [0.25, 0.5, 1.0]
    assert [p["cost"] for p in flops] == pytest.approx([2 * TFLOP, 4 * TFLOP, 8 * TFLOP])
    assert [p["acc"] for p in flops] == pytest.approx([0.705, 0.805, 0.865])
    # learndrop: 6 TFLOP -> frontier 0.835; acc 0.85 / 0.86 (mean 0.855) -> +2 points.
    ld = rows["learndrop"]["frontier"]["flops"]
    assert ld["frontier_acc"] == pytest.approx(0.835)
    assert ld["margin"] == pytest.approx(0.02) and ld["verdict"] == "above"
    assert rows["freezeout"]["frontier"]["flops"]["verdict"] == "below"
    assert rows["freezeout"]["frontier"]["flops"]["margin"] == pytest.approx(-0.03)
    # Time axis: ratios to the same seed's full run (60 s / 100 s = 0.6 -> frontier 0.805 +
    # 0.1/0.5 * 0.06 = 0.817).
    assert rows["learndrop"]["time_ratio"] == pytest.approx(0.6)
    assert rows["learndrop"]["frontier"]["time"]["frontier_acc"] == pytest.approx(0.817)
    assert rows["freezeout"]["frontier"]["time"]["frontier_acc"] == pytest.approx(0.835)
    # Outside the frontier's range: said so, no margin.
    sd = rows["stochastic-depth"]["frontier"]["flops"]
    assert sd["margin"] is None and sd["verdict"] == "outside the frontier's range"
    assert sd["positions"] == ["cheaper than every budget"]
    heavy = rows["heavy"]
    assert heavy["flops"] == pytest.approx(9 * TFLOP)  # its extra forward passes count
    assert heavy["frontier"]["flops"]["positions"] == ["costlier than full training"]
    # The copies of Learn&Drop's run ran in lockstep with the A/A control: timed against it.
    assert rows["random-drop"]["time_reference"] == "full-aa"
    assert rows["random-drop"]["time_ratio"] == pytest.approx(0.6)
    assert report["noise_floor"]["time_ratio"] == pytest.approx(1.1)
    assert report["noise_floor"]["cpu_ratio"] == pytest.approx(1.02)
    # Accuracy: mean ± std over seeds; time to target: full's final accuracy - 1 point.
    assert rows["learndrop"]["final_test_acc"] == pytest.approx(0.855)
    assert rows["learndrop"]["final_test_acc_std"] == pytest.approx(0.00707, abs=1e-5)
    assert rows["learndrop"]["per_seed"][0]["target_acc"] == pytest.approx(0.85)
    assert rows["learndrop"]["per_seed"][0]["time_to_target"]["epoch"] == 3
    assert rows["learndrop"]["time_to_target"] == {"reached": 2, "of": 2, "time_s": 10.0,
                                                   "cpu_s": 5.0, "flops": 3 * TFLOP}
    assert rows["full"]["time_to_target"]["time_s"] == pytest.approx(7.5)  # epoch 3 of 4
    assert rows["freezeout"]["time_to_target"]["reached"] == 0
    assert report["convergence"]["last_fifth_gain"] == pytest.approx(0.01)  # epoch 3 -> 4


def test_times_of_runs_on_different_machines_are_not_compared(fake_bench):
    """A run that trained on another machine than its full run has no time or CPU ratio and is no
    point of the time frontiers; its FLOPs and accuracy still count. A run that recorded no
    machine (before session 17) is compared as before."""
    for run in fake_bench.values():
        run["summary"]["machine"] = "Intel Xeon, 2 threads"
    fake_bench[("learndrop", 1)]["summary"]["machine"] = "AMD EPYC, 2 threads"
    fake_bench[("full-b0.5", 1)]["summary"]["machine"] = "AMD EPYC, 2 threads"
    del fake_bench[("freezeout", 0)]["summary"]["machine"]
    report = aggregate(fake_bench)
    ld = {r["seed"]: r for r in report["rows"]["learndrop"]["per_seed"]}
    assert ld[0]["time_ratio"] == pytest.approx(0.6) and ld[0]["cpu_ratio"] == pytest.approx(0.6)
    assert ld[1]["time_ratio"] is None and ld[1]["cpu_ratio"] is None
    assert ld[1]["frontier"]["time"] is None and ld[1]["frontier"]["cpu"] is None
    assert ld[1]["flops_ratio"] == pytest.approx(0.75)
    verdicts = report["rows"]["learndrop"]["frontier"]
    assert verdicts["flops"]["verdict"] == "above"
    assert verdicts["time"]["verdict"].endswith(" (1 seed(s) without a cost on this axis)")
    assert ld[1]["frontier"]["flops"]["margin"] is not None
    # Seed 1's half budget is no time point; seed 0's still is (the frontier averages seeds).
    time_points = {p["budget"]: p for p in report["frontier"]["time"]}
    flops_points = {p["budget"]: p for p in report["frontier"]["flops"]}
    assert time_points[0.5]["acc"] == pytest.approx(0.80)
    assert flops_points[0.5]["acc"] == pytest.approx(0.805)
    freeze = {r["seed"]: r for r in report["rows"]["freezeout"]["per_seed"]}
    assert freeze[0]["time_ratio"] == pytest.approx(0.75)


def test_a_run_on_another_machine_is_timed_against_a_full_run_beside_it(fake_bench):
    """The bench's full runs on one machine, a run and full training again (``--variant
    here-full=full``) later on another: the run's time ratio and its accuracy right after the
    first decision come from the full run of its own machine. The full variant itself, and a
    run with no full run on its machine, get no time ratio; accuracies stay against ``full``."""
    for run in fake_bench.values():
        run["summary"]["machine"] = "Intel Xeon, 2 threads"
    epyc = "AMD EPYC, 2 threads"
    fake_bench[("here-full", 0)] = {
        "summary": _summary("full", 0.87, 8, 200, 100, machine=epyc),
        "metrics": _curve([0.45, 0.75, 0.84, 0.87], 10)}
    ld = fake_bench[("learndrop", 0)]
    ld["summary"].update(machine=epyc, train_time_s=120, train_cpu_s=50)
    ld["metrics"] = _curve([0.45, 0.74, 0.85], 10)  # full training until epoch 2's decision
    ld["metrics"][1]["dropped"] = ["layer1.0"]
    fake_bench[("here-full", 0)]["metrics"][0]["train_loss"] = ld["metrics"][0]["train_loss"] = 2.0
    fake_bench[("freezeout", 0)]["summary"]["machine"] = "Intel Xeon Gold, 2 threads"
    # Seed 1's copy of Learn&Drop's run and its A/A control trained on the other machine.
    for label in ("random-drop", "full-aa"):
        fake_bench[(label, 1)]["summary"]["machine"] = epyc
    rows = aggregate(fake_bench)["rows"]
    first = {r["seed"]: r for r in rows["learndrop"]["per_seed"]}
    assert first[0]["time_reference"] == "here-full"
    assert first[0]["time_ratio"] == pytest.approx(0.6) and first[0]["cpu_ratio"] == 0.5
    assert first[0]["after_first_decision"]["delta"] == pytest.approx(-0.01)
    assert first[0]["acc_delta"] == pytest.approx(0.85 - 0.86)  # against the bench's full
    assert first[1]["time_reference"] == "full" and first[1]["time_ratio"] == pytest.approx(0.6)
    assert rows["here-full"]["per_seed"][0]["time_ratio"] is None
    assert rows["freezeout"]["per_seed"][0]["time_ratio"] is None
    # The paired accuracy against full training of its own machine, beside the bench's.
    assert first[0]["acc_delta_own_machine"] == pytest.approx(0.85 - 0.87)
    assert first[1]["acc_delta_own_machine"] is None  # its full run trained beside it
    own = rows["learndrop"]["own_machine"]
    assert own["seeds"] == [0] and own["references"] == ["here-full"]
    assert own["acc_delta"] == pytest.approx(-0.02) and own["acc_delta_std"] is None
    assert own["time_ratios"] == [pytest.approx(0.6)]
    assert all(rows[label]["own_machine"] is None for label in ("full", "here-full", "freezeout"))
    copy_ = rows["random-drop"]["own_machine"]  # against the A/A control of its machine
    assert copy_["seeds"] == [1] and copy_["references"] == ["full-aa"]
    assert copy_["acc_deltas"] == [pytest.approx(0.84 - 0.87)]
    md = bench_markdown({"config": {}, "seeds": [0, 1], "finished": 19,
                         "machine": machine_info("cpu"), **aggregate(fake_bench)})
    section = md.split("## Against full training on the run's own machine")[1].split("## ")[0]
    assert [line for line in section.splitlines() if line.startswith("| ") and "---" not in line
            ][1:] == ["| learndrop | 0 | here-full | -2.00 | -2.00 | 0.600 |",
                      "| random-drop | 1 | full-aa | -3.00 | -3.00 | 0.600 |"]


def test_accuracy_right_after_the_first_decision(fake_bench):
    full0 = [r["test_acc"] for r in fake_bench[("full", 0)]["metrics"]]
    for seed in (0, 1):  # the training loss of full training's first epoch
        fake_bench[("full", seed)]["metrics"][0]["train_loss"] = 2.0
    for seed, after in ((0, -0.01), (1, -0.03)):
        full = fake_bench[("full", seed)]["metrics"]
        rows = fake_bench[("learndrop", seed)]["metrics"] = _curve(
            [full[0]["test_acc"], full[1]["test_acc"] + after, 0.85], 10)
        rows[0]["train_loss"] = 2.0
        rows[1]["dropped"] = ["layer1.0", "layer1.1"]  # decided at the end of epoch 2
    # FreezeOut differs from full training before its first freeze: not comparable.
    freeze = fake_bench[("freezeout", 0)]["metrics"] = _curve([full0[0] - 0.1, 0.7, 0.8], 10)
    freeze[1]["dropped"] = ["layer1.0"]
    # A decision in the first epoch counts only if that epoch trained as full training did
    # (the same training loss): FreezeOut's seed 1 did not, random-drop's seeds did.
    for seed in (0, 1):
        early = fake_bench[("random-drop", seed)]["metrics"]
        early[0].update(dropped=["layer2.0"], train_loss=2.0, test_acc=0.4)
    late = fake_bench[("freezeout", 1)]["metrics"]
    late[0].update(dropped=["layer1.0"], train_loss=2.1)
    for seed in (0, 1):  # the A/A control repeats full training to the digit (one machine)
        fake_bench[("full-aa", seed)]["metrics"] = copy.deepcopy(
            fake_bench[("full", seed)]["metrics"])
    report = aggregate(fake_bench)
    rd = report["rows"]["random-drop"]["after_first_decision"]
    assert rd["epochs"] == [1, 1] and rd["delta"] == pytest.approx(-0.1)
    assert report["rows"]["freezeout"]["after_first_decision"] is None
    ld = report["rows"]["learndrop"]["after_first_decision"]
    assert ld["seeds"] == 2 and ld["epochs"] == [2, 2] and ld["units"] == [2, 2]
    assert ld["delta"] == pytest.approx(-0.02) and ld["delta_std"] == pytest.approx(0.01414,
                                                                                   abs=1e-5)
    first = report["rows"]["learndrop"]["per_seed"][0]["after_first_decision"]
    assert first["full_acc"] == pytest.approx(full0[1])
    assert first["test_acc"] == pytest.approx(full0[1] - 0.01)
    assert report["rows"]["freezeout"]["per_seed"][0]["after_first_decision"] is None
    assert report["rows"]["full"]["after_first_decision"] is None  # never decided
    md = bench_markdown({"config": {}, "seeds": [0, 1], "finished": 18,
                         "machine": machine_info("cpu"), **report})
    line = next(row for row in md.split("## Right after the first decision")[1].splitlines()
                if row.startswith("| learndrop |"))
    assert line.endswith("| -2.00 ± 1.41 |") and "| 2/2 |" in line
    assert "| freezeout |" not in md.split("## Right after the first decision")[1].split(
        "## Checks")[0]

    # Full training and Learn&Drop on one machine, the copy and the A/A control later on
    # another, where the same seed's first epoch rounds differently: the copy is compared
    # with the A/A control trained beside it, not with full training of the other machine.
    for seed in (0, 1):
        for label in ("random-drop", "full-aa"):
            fake_bench[(label, seed)]["summary"]["machine"] = "Intel Xeon, 2 threads"
            fake_bench[(label, seed)]["metrics"][0].update(test_acc=0.45, train_loss=2.01)
        fake_bench[("random-drop", seed)]["metrics"][0]["test_acc"] = 0.35
        for label in ("full", "learndrop"):
            fake_bench[(label, seed)]["summary"]["machine"] = "AMD EPYC, 2 threads"
    rows = aggregate(fake_bench)["rows"]
    assert rows["random-drop"]["after_first_decision"]["delta"] == pytest.approx(-0.1)
    assert rows["learndrop"]["after_first_decision"]["delta"] == pytest.approx(-0.02)


def test_units_that_fade_out_are_measured_when_they_leave(fake_bench):
    """A decision that starts fades (``fade_steps``) is measured at the end of the first epoch
    in which a unit left (not at the decision's, whose network was still whole), against full
    training's at that epoch; the epochs of the fade differ from full training's."""
    for seed in (0, 1):
        full = fake_bench[("full", seed)]["metrics"]
        full[0]["train_loss"] = 2.0
        rows = fake_bench[("learndrop", seed)]["metrics"] = _curve(
            [full[0]["test_acc"], full[1]["test_acc"] - 0.05, full[2]["test_acc"] - 0.004], 10)
        rows[0].update(train_loss=2.0, fading=["layer1.0"])  # the fade starts at its end
        rows[1].update(train_loss=1.5, fading=["layer1.1"])  # still fading: not measured
        rows[2]["dropped"] = ["layer1.0", "layer1.1"]
    report = aggregate(fake_bench)
    ld = report["rows"]["learndrop"]["after_first_decision"]
    assert ld["epochs"] == [3, 3] and ld["decided"] == [1, 1] and ld["units"] == [2, 2]
    assert ld["delta"] == pytest.approx(-0.004)
    md = bench_markdown({"config": {}, "seeds": [0, 1], "finished": 18,
                         "machine": machine_info("cpu"), **report})
    assert "| learndrop | 2 | 3 (from 1)/3 (from 1) | 2/2 |" in md
    # A fade that never ended (a run stopped mid-fade) measures nothing.
    for seed in (0, 1):
        fake_bench[("learndrop", seed)]["metrics"][2]["dropped"] = []
    assert aggregate(fake_bench)["rows"]["learndrop"]["after_first_decision"] is None


def test_training_loss_by_epoch_is_averaged_over_the_seeds_that_logged_every_epoch(fake_bench):
    """The lag a network carries (a run cut during training against full training and a slim
    network from scratch) is read from each epoch's training loss, mean over seeds; a seed
    that lost an epoch's row is left out, budgets and the A/A control are not shown."""
    losses = {("full", 0): [2.0, 1.6, 1.3, 1.0], ("full", 1): [2.2, 1.8, 1.5, 1.2],
              ("learndrop", 0): [2.0, 1.7, 1.4], ("learndrop", 1): [2.2, 1.9, 1.6],
              ("freezeout", 0): [2.1, 1.9, 1.7], ("freezeout", 1): [2.1, 1.9]}
    for (label, seed), values in losses.items():
        run = fake_bench[(label, seed)]
        run["summary"]["epochs"] = 4 if label == "full" else 3
        run["metrics"] = run["metrics"][:len(values)]
        for row, loss in zip(run["metrics"], values, strict=True):
            row.update(train_loss=loss, train_acc=1 - loss / 4)
    rows = aggregate(fake_bench)["rows"]
    assert rows["full"]["train_loss_by_epoch"] == pytest.approx([2.1, 1.7, 1.4, 1.1])
    assert rows["full"]["final_train_acc"] == pytest.approx(1 - 1.1 / 4)
    assert rows["learndrop"]["train_loss_by_epoch"] == pytest.approx([2.1, 1.8, 1.5])
    assert rows["learndrop"]["per_seed"][1]["train_loss_by_epoch"] == pytest.approx(
        [2.2, 1.9, 1.6])
    assert rows["freezeout"]["train_loss_seeds"] == 1  # seed 1 logged 2 of its 3 epochs
    assert rows["freezeout"]["train_loss_by_epoch"] == pytest.approx([2.1, 1.9, 1.7])
    assert rows["freezeout"]["final_train_acc"] == pytest.approx(1 - 1.7 / 4)  # seed 0's
    assert rows["full-b0.5"]["train_loss_by_epoch"] is None  # no training loss logged
    md = bench_markdown({"config": {}, "seeds": [0, 1], "finished": 18,
                         "machine": machine_info("cpu"), **aggregate(fake_bench)})
    table = md.split("## Training loss by epoch")[1].split("\n## ")[0]
    assert "| run | seeds | epoch 1 | epoch 2 | epoch 3 | epoch 4 | train acc (%) |" in table
    assert "| full | 2 | 2.100 | 1.700 | 1.400 | 1.100 | 72.5 |" in table
    assert "| learndrop | 2 | 2.100 | 1.800 | 1.500 | – | 62.5 |" in table
    assert "full-aa" not in table and "full-b0.5" not in table
    assert shown_epochs(10) == [1, 2, 3, 5, 8, 10] and shown_epochs(4) == [1, 2, 3, 4]
    assert shown_epochs(200) == [1, 2, 3, 50, 100, 150, 200]


def test_markdown_says_above_below_and_outside(fake_bench):
    report = {"config": {"model": "resnet20", "dataset": "fashion-mnist", "epochs": 8},
              "seeds": [0, 1], "finished": 18, "machine": machine_info("cpu"),
              **aggregate(fake_bench)}
    md = bench_markdown(report)
    line = {row.split(" | ")[0]: row for row in md.splitlines() if row.startswith("| ")}
    assert "above" in line["| learndrop"] and "below" in line["| freezeout"]
    assert "outside the frontier's range" in line["| stochastic-depth"]
    assert "time ratio (A/A 1.100)" in md and "Noise floor" in md
    assert "own machine" not in md  # every run beside its full run: no second comparison
    machine = machine_info()  # every results file names the machine it was written on
    assert machine["torch"] in md and all(flag in md for flag in machine["cpu_flags"])
    assert f"Report written on: {machine['cpu']} (" in md


def test_a_bench_asked_for_seed_by_seed_records_every_invocation():
    """proof.py runs one seed per invocation, and ``--methods`` a first look completed later:
    bench.json's plan is what all the invocations asked for, not only the last."""
    seed0 = {"methods": ["full", "learndrop"], "seeds": [0], "budgets": [0.5, 0.25],
             "variants": {}, "aa_control": False, "shallow": None,
             "groups": [["full-s0", "learndrop-s0"]]}
    seed1 = {"methods": ["full", "learndrop", "random-drop"], "seeds": [1], "budgets": [0.75],
             "variants": {"learndrop-paper": {"method": "learndrop", "options": {}}},
             "aa_control": True, "shallow": "resnet20",
             "groups": [["full-s1", "learndrop-s1"], ["random-drop-s1", "full-aa-s1"]]}
    merged = merge_plans(seed0, seed1)
    assert merged["methods"] == ["full", "learndrop", "random-drop"]
    assert merged["seeds"] == [0, 1] and merged["budgets"] == [0.25, 0.5, 0.75]
    assert merged["aa_control"] and merged["shallow"] == ["resnet20"]
    assert list(merged["variants"]) == ["learndrop-paper"]
    assert merged["groups"] == [["full-s0", "learndrop-s0"], *seed1["groups"]]
    # The same invocation again (a resumed bench) changes nothing; a later first look without
    # the A/A control or shallow network keeps them.
    assert merge_plans(merged, seed1) == merged
    again = merge_plans(merged, {**seed0, "seeds": [2]})
    assert again["seeds"] == [0, 1, 2] and again["aa_control"]
    assert again["shallow"] == ["resnet20"]
    # Every shallower network asked for is kept (a plan before the depth frontier named one).
    assert merge_plans(again, {**seed0, "shallow": ["resnet32", "resnet20"]})["shallow"] == [
        "resnet20", "resnet32"]
    # A group asked for again in another order (groups rotate with the seed's place in
    # --seeds) is recorded once.
    rotated = {**seed1, "seeds": [0, 1], "groups": [["learndrop-s1", "full-s1"]]}
    assert merge_plans(merged, rotated)["groups"] == merged["groups"]
    # Nothing recorded yet (or an unreadable report): the invocation's plan, normalised alike.
    assert merge_plans(None, seed0) == merge_plans(merge_plans([], seed0), seed0)
    assert merge_plans(None, {**seed0, "seeds": [2, 0]})["seeds"] == [0, 2]


def test_the_tests_around_each_drop_are_reported_per_run(fake_bench):
    """Runs that tested around their drops (``drop_evals`` in their summaries): each seed's
    first, worst and mean change, mean ± std over seeds, in a table of their own; a run that
    did not test has none, and fades are marked as read from start to end."""
    def record(before, after, step=100, step_before=100, recalibrated=None):
        return {"step_before": step_before, "step": step, "units": ["layer1.0"],
                "test_acc_before": before, "test_acc_after": after,
                "test_acc_before_recalibrated": recalibrated}

    fake_bench[("learndrop", 0)]["summary"]["drop_evals"] = [
        record(0.60, 0.59, recalibrated=0.62), record(0.70, 0.66, 200, 200, recalibrated=0.66)]
    fake_bench[("learndrop", 1)]["summary"]["drop_evals"] = [
        record(0.62, 0.64, recalibrated=0.65)]
    fake_bench[("random-drop", 0)]["summary"]["drop_evals"] = [record(0.6, 0.5, 130, 100)]
    rows = aggregate(fake_bench)["rows"]
    seed0 = rows["learndrop"]["per_seed"][0]["around_drops"]
    assert seed0["count"] == 2 and seed0["same_step"]
    assert (seed0["first"], seed0["worst"], seed0["mean"]) == pytest.approx((-0.01, -0.04,
                                                                            -0.025))
    # The drop alone: after minus before with BatchNorm recalibrated (-0.03 and 0.0).
    assert (seed0["first_alone"], seed0["worst_alone"], seed0["mean_alone"]) == pytest.approx(
        (-0.03, -0.03, -0.015))
    ld = rows["learndrop"]["around_drops"]
    assert ld["seeds"] == 2 and ld["drops"] == [2, 1]
    assert ld["first"] == pytest.approx(0.005) and ld["first_std"] == pytest.approx(0.0212132)
    assert ld["worst"] == pytest.approx(-0.01)
    assert rows["freezeout"]["around_drops"] is None
    assert not rows["random-drop"]["around_drops"]["same_step"]
    md = bench_markdown({"config": {}, "seeds": [0, 1], "finished": 18,
                         "machine": machine_info("cpu"), **aggregate(fake_bench)})
    assert "## Around each drop" in md
    assert ("| learndrop | 2 | 2/1 | +0.50 ± 2.12 | -1.00 ± 4.24 | -0.25 ± 3.18 "
            "| -2.00 ± 1.41 / -2.00 ± 1.41 / -1.25 ± 0.35 |") in md
    assert ("| random-drop (fades: start to end) | 1 | 1 | -10.00 | -10.00 | -10.00 "
            "| – / – / – |") in md


def test_the_depth_frontier_is_full_training_of_shallower_networks(fake_bench):
    """Full training of smaller networks of the family (``full-<model>`` runs) trace what
    training a smaller network costs and reaches; each method's run is read against the line
    through them and full training at its own FLOPs. The depth check is the shallowest's."""
    for seed, jitter in ((0, 0.0), (1, 0.01)):
        for model, acc, tflop in (("resnet8", 0.78, 2), ("resnet14", 0.82, 4)):
            fake_bench[(f"full-{model}", seed)] = {
                "summary": _summary("full", acc + jitter, tflop, 25 * tflop / 2, 6 * tflop,
                                    model=model),
                "metrics": _curve((0.5, acc + jitter), 10)}
    report = aggregate(fake_bench)
    points = report["depth_frontier"]
    assert [p["budget"] for p in points] == [0.25, 0.5, 1.0]
    assert [p["acc"] for p in points] == pytest.approx([0.785, 0.825, 0.865])
    assert report["depth"]["model"] == "resnet8"
    rows = report["rows"]
    # At 6 TFLOP the line from 0.825 (4) to 0.865 (8) gives 0.845.
    assert rows["learndrop"]["depth_frontier"]["frontier_acc"] == pytest.approx(0.845)
    assert rows["learndrop"]["depth_frontier"]["margin"] == pytest.approx(0.01)
    assert rows["learndrop"]["depth_frontier"]["verdict"] == "above"
    assert rows["freezeout"]["depth_frontier"]["verdict"] == "below"
    assert rows["stochastic-depth"]["depth_frontier"]["verdict"] == (
        "outside the frontier's range")
    assert all(rows[label]["depth_frontier"] is None
               for label in ("full", "full-b0.5", "full-aa", "full-resnet8"))
    assert [p["model"] for p in points] == ["resnet8", "resnet14", "resnet20"]
    # Shallow runs of seeds without a full run make no point; a line needs two.
    alone = {k: v for k, v in fake_bench.items()
             if (k[1] == 0 and "resnet" not in k[0]) or k == ("full-resnet8", 1)}
    assert aggregate(alone)["depth_frontier"] == []
    assert aggregate(alone)["rows"]["learndrop"]["depth_frontier"] is None
    head = {"config": {}, "seeds": [0, 1], "finished": 22, "machine": machine_info("cpu")}
    md = bench_markdown({**head, **report})
    section = md.split("## Against shallower networks trained in full")[1].split("\n## ")[0]
    assert "| resnet8 | 2 | 2.00 | 0.250 | 78.50 ± 0.71 |" in section
    assert "| learndrop | 2 | 0.750 | 84.50 | +1.00 ± 0.71 | above |" in section
    # Without shallower networks there is no such section.
    assert "shallower networks" not in bench_markdown({**head, **aggregate(
        {k: v for k, v in fake_bench.items() if "resnet" not in k[0]})})


def test_the_depth_frontier_is_also_read_seed_by_seed_on_the_runs_own_machine(fake_bench):
    """Where the runs trained on several machines, each method's run is also read against the
    line through full training of its own seed on its own machine (the run it is timed
    against) and the shallower networks of that seed trained there: runs of another machine
    make no point of that line, a run whose FLOPs lie outside it gets no margin, nor does one
    whose line lacks a network of the pooled line around its FLOPs."""
    for run in fake_bench.values():
        run["summary"]["machine"] = "a"
    for seed, model, acc, tflop, machine in ((0, "resnet8", 0.78, 2, "a"),
                                             (0, "resnet14", 0.82, 4, "a"),
                                             (1, "resnet8", 0.79, 2, "a"),
                                             (1, "resnet14", 0.83, 4, "b")):
        fake_bench[(f"full-{model}", seed)] = {
            "summary": _summary("full", acc, tflop, 25 * tflop / 2, 6 * tflop, model=model,
                                machine=machine), "metrics": _curve((0.5, acc), 10)}
    # Seed 1 of Learn&Drop and of stochastic depth trained on machine b, beside a full run;
    # seed 1 of FreezeOut on machine c, where no full run trained.
    for label, machine in (("learndrop", "b"), ("stochastic-depth", "b"), ("freezeout", "c")):
        fake_bench[(label, 1)]["summary"]["machine"] = machine
    fake_bench[("learndrop", 1)]["summary"]["final_test_acc"] = 0.855
    fake_bench[("b-full", 1)] = {"summary": _summary("full", 0.89, 8, 100, 50, machine="b"),
                                 "metrics": _curve((0.5, 0.89), 10)}
    # ResNet-8 of seed 1 trained again on machine b under a label of its own
    # (--variant a-r8=full:model=resnet8); its label sorts before b-full's.
    fake_bench[("a-r8", 1)] = {
        "summary": _summary("full", 0.80, 2, 25, 12, model="resnet8", machine="b"),
        "metrics": _curve((0.5, 0.80), 10)}
    report = aggregate(fake_bench)
    ld = report["rows"]["learndrop"]
    seed0, seed1 = (r["depth_frontier"]["own_machine"] for r in ld["per_seed"])
    # Seed 0, all on machine a: at 6 TFLOP between resnet14 (0.82) and full (0.86).
    assert seed0["frontier_acc"] == pytest.approx(0.84) and seed0["margin"] == pytest.approx(0.01)
    assert seed0["networks"] == ["resnet8", "resnet14", "resnet20"]
    # Seed 1 on machine b: b's full run (0.89), resnet14 (0.83) and b's own resnet8 (the
    # variant); a's resnet8 is left out. Learn&Drop is still timed against b's full run.
    assert seed1["frontier_acc"] == pytest.approx(0.86)
    assert seed1["margin"] == pytest.approx(-0.005)
    assert seed1["networks"] == ["resnet8", "resnet14", "resnet20"]
    assert ld["per_seed"][1]["time_reference"] == "b-full"
    # The variant is a shallower network: a point of the pooled line (resnet8 over 3 runs),
    # not a run against it.
    r8 = report["rows"]["a-r8"]
    assert r8["role"] == "shallow" and r8["depth_frontier"] is None
    assert [(p["model"], p["seeds"]) for p in report["depth_frontier"]] == [
        ("resnet8", 3), ("resnet14", 2), ("resnet20", 2)]
    assert report["depth_frontier"][0]["acc"] == pytest.approx((0.78 + 0.79 + 0.80) / 3)
    del fake_bench[("a-r8", 1)]
    report = aggregate(fake_bench)
    ld = report["rows"]["learndrop"]
    assert ld["per_seed"][1]["depth_frontier"]["own_machine"]["networks"] == [
        "resnet14", "resnet20"]
    paired = ld["depth_frontier"]["own_machine"]
    assert paired["seeds"] == [0, 1] and paired["margins"] == pytest.approx([0.01, -0.005])
    assert paired["margin"] == pytest.approx(0.0025)
    assert paired["verdict"] == "above (within the seed spread)"
    # The pooled line mixes the machines: at 6 TFLOP between the mean points 0.825 and 0.865.
    assert ld["depth_frontier"]["frontier_acc"] == pytest.approx(0.845)
    # Stochastic depth (1 TFLOP) is cheaper than every network of its lines.
    sd = report["rows"]["stochastic-depth"]["depth_frontier"]["own_machine"]
    assert sd["margins"] == [None, None] and sd["verdict"] == "outside the frontier's range"
    # A run at the cheapest network's FLOPs, a rounding error below them, is read there.
    cheap = fake_bench[("stochastic-depth", 0)]["summary"]
    cheap["fwd_flops"], cheap["bwd_flops"] = (v * (1 - 1e-12) for v in (
        2 * TFLOP / 3, 4 * TFLOP / 3))
    at_r8 = aggregate(fake_bench)["rows"]["stochastic-depth"]["per_seed"][0]
    assert at_r8["depth_frontier"]["own_machine"]["margin"] == pytest.approx(0.5 - 0.78)
    cheap["fwd_flops"], cheap["bwd_flops"] = TFLOP / 3, 2 * TFLOP / 3
    # No full run on machine c: FreezeOut's seed 1 has no line of its own.
    fz = report["rows"]["freezeout"]
    assert fz["per_seed"][1]["depth_frontier"]["own_machine"] is None
    assert fz["depth_frontier"]["own_machine"]["seeds"] == [0]
    # A full run under another label is a point of a line, not a run against one.
    assert report["rows"]["b-full"]["depth_frontier"] is None
    head = {"config": {}, "seeds": [0, 1], "finished": 26, "machine": machine_info("cpu")}
    section = bench_markdown({**head, **report, "trained_on": {"a": [], "b": []}}).split(
        "## Against shallower networks trained in full")[1].split("\n## ")[0]
    assert ("| learndrop | 0/1 | resnet8+resnet14+resnet20 / resnet14+resnet20 "
            "| +1.00, -0.50 | +0.25 ± 1.06 | above (within the seed spread) |") in section
    # On one machine (runs that recorded none aside) the paired line says what the pooled one
    # does: not shown.
    for machines in ({"a": []}, {"a": [], "not recorded": []}):
        one = bench_markdown({**head, **report, "trained_on": machines})
        assert "Seed by seed on the run's own machine" not in one
    # A network of the pooled line between the two around Learn&Drop's FLOPs (resnet17, 7
    # TFLOP, seed 0 on machine a) that machine b lacks: seed 1 gets no margin, and says why.
    fake_bench[("full-resnet17", 0)] = {
        "summary": _summary("full", 0.85, 7, 90, 42, model="resnet17", machine="a"),
        "metrics": _curve((0.5, 0.85), 10)}
    ld = aggregate(fake_bench)["rows"]["learndrop"]
    seed0, seed1 = (r["depth_frontier"]["own_machine"] for r in ld["per_seed"])
    assert seed0["margin"] == pytest.approx(0.01)  # 0.82 + 2/3 * 0.03 at 6 TFLOP
    assert seed1["margin"] is None and seed1["position"] == "lacks resnet17 on this machine"
    assert ld["depth_frontier"]["own_machine"]["verdict"] == (
        "above (1 seed(s) whose line lacks a network on their machine)")
    # A run whose every seed lacks one has no verdict, and says why.
    fake_bench[("learndrop", 0)]["summary"]["machine"] = "b"
    fake_bench[("b-full", 0)] = {"summary": _summary("full", 0.88, 8, 100, 50, machine="b"),
                                 "metrics": _curve((0.5, 0.88), 10)}
    fake_bench[("full-resnet14", 0)]["summary"]["machine"] = "b"
    assert aggregate(fake_bench)["rows"]["learndrop"]["depth_frontier"]["own_machine"][
        "verdict"] == "no verdict: 2 seed(s) whose line lacks a network on their machine"


def test_a_copy_is_timed_against_the_aa_control_only_on_its_own_machine(fake_bench):
    """Random-drop trains beside the A/A control; where the control of a seed trained on another
    machine, the full run of the copy's own machine is its reference instead of none."""
    for run in fake_bench.values():
        run["summary"]["machine"] = "a"
    fake_bench[("full-aa", 1)]["summary"]["machine"] = "b"
    rows = aggregate(fake_bench)["rows"]
    seed0, seed1 = rows["random-drop"]["per_seed"]
    assert seed0["time_reference"] == "full-aa" and seed0["time_ratio"] == pytest.approx(0.6)
    assert seed1["time_reference"] == "full" and seed1["time_ratio"] == pytest.approx(0.66)
