"""A worked example: a new method is one file. Everything below the marked block is what
that file would hold; the rest of the test shows that the CLI, the drivers and the contract
tests take it up with no other change."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from learndrop.methods import METHODS, Event, Method, RunInfo

# ---- the whole new method (learndrop/methods/drop_last.py) ----------------------------------


@dataclass(frozen=True)
class DropLastOptions:
    """Options of ``--method drop-last``.

    Attributes:
        every_checks: drop the deepest live unit at every this many checks (>= 1).
    """

    every_checks: int = field(default=2)

    def __post_init__(self) -> None:
        if self.every_checks < 1:
            raise ValueError(f"--every-checks must be >= 1, got {self.every_checks}")


class DropLast(Method):
    """Drops the deepest live unit every ``every_checks`` checks (a toy schedule)."""

    def __init__(self, *args, every_checks: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.every_checks = every_checks

    def on_check(self) -> list[Event]:
        if self.checks % self.every_checks or len(self.live_units) <= 1:
            return []
        by_name = {u.name: u for u in self.units}
        chosen = self.sync_decision([self.live_units[-1].name])
        return [self.apply(by_name[n], "drop") for n in chosen]

# ---- (end of the file; it would also carry @register_method("drop-last", ...)) --------------


@pytest.fixture
def drop_last():
    """Registers the example as a module of learndrop.methods would at import."""
    from learndrop.methods import register_method

    register_method("drop-last", options=DropLastOptions)(DropLast)
    yield "drop-last"
    METHODS.pop("drop-last")


def test_the_cli_offers_its_options(drop_last):
    from learndrop.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--method", "drop-last", "--every-checks", "3"])
    from learndrop.cli import config_from_args

    config = config_from_args(args)
    assert config.method_options == {"every_checks": 3}
    config.validate()
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "--every-checks" in help_text and "deepest live unit" in help_text
    bad = config_from_args(parser.parse_args(["train", "--method", "full", "--every-checks", "3"]))
    with pytest.raises(ValueError, match="--every-checks is not an option of --method full"):
        bad.validate()


def test_the_stream_loop_trains_it(drop_last, tmp_path, one_thread, monkeypatch):
    from test_stream import stream_config, synthetic_batches, tiny_stream_net

    from learndrop.models import registry
    from learndrop.train.stream import train_stream

    monkeypatch.setitem(registry._MODELS, "tiny_stream_net", tiny_stream_net)
    config = stream_config(tmp_path, method="drop-last", method_options={"every_checks": 2},
                           stream_length=20)
    summary = train_stream(config, synthetic_batches(None), test_batches=list(
        synthetic_batches(1)), num_classes=4, log=lambda s: None)
    assert [d["step"] for d in summary["drops"]] == [10]  # check 2 of every 5 steps; then 1 left
    assert summary["units_dropped"] == 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["method"] == "drop-last"


def test_the_contract_covers_it(drop_last, tmp_path):
    import test_method_contract as contract

    reference = str(tmp_path)
    contract.test_resume_equals_the_uninterrupted_run(drop_last, reference)
    contract.test_state_dict_round_trips(drop_last, reference)
    contract.test_flops_ledger_is_monotone(drop_last, reference)
    contract.test_a_broadcast_decision_is_honoured(drop_last, reference)
    model, optimizer, method = contract.build(drop_last, reference)
    assert isinstance(method, DropLast) and method.every_checks == 2
    assert RunInfo().total_steps is None


def test_drivers_ask_a_method_which_facts_of_the_run_it_takes():
    """``method_takes`` reads the constructor, following ``**kwargs`` to the parent's (Freeze
    fixes Learn&Drop's mode and passes the rest on)."""
    from learndrop.methods import UnknownMethodError, method_takes

    assert method_takes("learndrop", "total_steps")
    assert not method_takes("learndrop", "total_steps", required=True)  # only with fades
    assert method_takes("freeze", "total_steps") and method_takes("freeze", "policy")
    assert method_takes("freezeout", "total_steps", required=True)
    assert not method_takes("full", "total_steps")
    with pytest.raises(UnknownMethodError, match="unknown method 'nope'"):
        method_takes("nope", "total_steps")
