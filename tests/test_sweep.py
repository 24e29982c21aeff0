"""Sweep syntax on the command line: a..b ranges, comma lists, Hydra's range()/glob(); plain values run once."""

import pytest

from runners.sweep import expand_argv


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["seed=0..4"], ["--multirun", "seed=range(0,5)"]),
        (["method=lora", "seed=2..2"], ["--multirun", "method=lora", "seed=range(2,3)"]),
        (["seed=0,1,2"], ["--multirun", "seed=0,1,2"]),
        (["seed=range(0,3)"], ["--multirun", "seed=range(0,3)"]),
        (["method=glob(*)"], ["--multirun", "method=glob(*)"]),
        (["seed=3", "task=rte"], ["seed=3", "task=rte"]),
        (["-m", "seed=0,1"], ["-m", "seed=0,1"]),
        (["method=iapt", "--cfg", "job"], ["method=iapt", "--cfg", "job"]),  # a flag's value is no override
        ([], []),
    ],
)
def test_expand(argv, expected):
    assert expand_argv(argv) == expected


def test_reversed_range_is_an_error():
    with pytest.raises(ValueError, match="4..0"):
        expand_argv(["seed=4..0"])


def test_range_expands_to_the_inclusive_seeds():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (override,) = OverridesParser.create().parse_overrides(expand_argv(["seed=0..4"])[1:])
    assert list(override.sweep_iterator()) == [0, 1, 2, 3, 4]
