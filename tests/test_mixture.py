"""The multi-task mixture (tasks/mixture.py) on the real SST-2, RTE, MRPC and CB files: members' own splits
interleaved (equal shares under a cap), per-task scoring and their mean, each row's own answer choices.

    .venv/bin/python -m pytest tests/test_mixture.py -q
"""

from __future__ import annotations

import collections

import pytest

from core.errors import UserError
from tasks.registry import build_task
from tests.conftest import compose, shared_data

MEMBERS = ("sst2", "rte", "mrpc", "cb")


@pytest.fixture(scope="module")
def mixture():
    root = shared_data()
    for folder in ("glue/SST-2", "glue/RTE", "glue/MRPC", "superglue/CB"):
        shared_data(*folder.split("/"))
    task = build_task(compose("task=mixture").task)
    return task, task.splits(root)


def test_splits_are_the_members_own_interleaved(mixture):
    task, splits = mixture
    for split in ("train", "dev", "test"):
        members = collections.Counter(task.member_of(e) for e in splits[split])
        own = {m: len(build_task(compose(f"task={m}").task).splits(shared_data(task.members[m].cfg.local_dir))[split])
               for m in MEMBERS} if split == "test" else None
        assert set(members) == set(MEMBERS), (split, members)
        if own:
            assert dict(members) == own, "every member's test rows, once each"
    first = collections.Counter(task.member_of(e) for e in splits["train"][:40])
    assert first == {m: 10 for m in MEMBERS}, "a cap takes equal shares while every member has rows"
    assert len({e.id for e in splits["test"]}) == len(splits["test"])


def test_scoring_is_per_member_and_their_mean(mixture):
    task, splits = mixture
    test = splits["test"]
    preds = []
    for i, e in enumerate(test):  # right on the even rows, another label on the odd ones
        wrong = next(lab for lab in task.members[task.member_of(e)].labels if lab != e.response)
        preds.append(e.response if i % 2 == 0 else wrong)
    got = task.score(preds, test)
    expected = {}
    for m in MEMBERS:
        rows = [(p, e) for p, e in zip(preds, test) if task.member_of(e) == m]
        own = task.members[m].score([p for p, _ in rows], [e for _, e in rows])
        key = next(iter(own))  # the member's headline metric
        expected[f"{key}_{m}"] = own[key]
    assert list(got)[:2] == ["mean", "acc"]
    assert {k: v for k, v in got.items() if k not in ("mean", "acc")} == pytest.approx(expected)
    assert got["mean"] == pytest.approx(sum(expected.values()) / len(MEMBERS))
    assert got["acc"] == pytest.approx(100 * sum(i % 2 == 0 for i in range(len(test))) / len(test))


def test_each_row_chooses_among_its_own_tasks_labels(mixture):
    from runners.scoring import check_labels

    task, splits = mixture
    rows = splits["test"][:8]
    choices = check_labels(task, rows, "mixture")
    for e, c in zip(rows, choices):
        assert c == list(task.members[task.member_of(e)].labels) and e.response in c


def test_a_member_without_labels_or_twice_is_one_line():
    with pytest.raises(UserError, match="must name two or more different tasks"):
        build_task(compose("task=mixture", "task.members=[sst2,sst2]").task)
    with pytest.raises(UserError, match="'squad' has no label set"):
        build_task(compose("task=mixture", "task.members=[sst2,squad]").task)
