"""benchmarks/step_schedule.py's schedule: the classic step schedule it swaps in for the
trainer's, which decides where the late-drop guard trips."""

import pytest


def test_the_step_schedule_warms_up_then_cuts_by_ten(benchmark_script):
    script = benchmark_script("step_schedule")
    factor = script.step_schedule(total_steps=400, warmup_steps=50, extensions=[])
    assert factor(0) == pytest.approx(1 / 50) and factor(49) == pytest.approx(1.0)
    assert factor(50) == factor(199) == 1.0  # the peak until half of the steps
    assert factor(200) == pytest.approx(0.1) and factor(299) == pytest.approx(0.1)
    assert factor(300) == pytest.approx(0.01) and factor(399) == pytest.approx(0.01)
    # The guard at its default trips at the first cut and never before it.
    from learndrop.policy import DropPolicy

    policy = DropPolicy()
    assert policy.lr_allows(0.1 * factor(199), 0.1)
    assert not policy.lr_allows(0.1 * factor(200), 0.1)
    # Nothing the trainer would pass it is dropped silently: extensions and a decay fraction
    # belong to the cosine it replaces.
    with pytest.raises(SystemExit, match="no decay fraction"):
        script.step_schedule(400, 50, [(300, 0.5)])
    with pytest.raises(SystemExit, match="no decay fraction"):
        script.step_schedule(400, 50, [], decay_fraction=0.3)
