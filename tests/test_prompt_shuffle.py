"""raypref.prompt_shuffle: whole prompts, every row once, fixed batch sizes, a new order per seed."""

import numpy as np
import pytest

from raypref.prompt_shuffle import prompt_batches


def _batches(sizes, per_batch):
    """Prompt p has sizes[p] rows, written together, cut into input batches of per_batch rows."""
    pid = np.repeat(np.arange(len(sizes)), sizes)
    row = np.arange(len(pid))
    return [{"pid": pid[i:i + per_batch], "row": row[i:i + per_batch]} for i in range(0, len(pid), per_batch)], len(pid)


def _run(sizes, per_batch, batch_size, buffer_rows, seed):
    batches, n = _batches(sizes, per_batch)
    return list(prompt_batches(iter(batches), batch_size, buffer_rows, "pid", np.random.default_rng(seed))), n


def test_every_row_once_and_every_batch_but_the_last_full():
    out, n = _run([3, 6, 1, 6, 3, 3, 6, 1, 3, 6], per_batch=7, batch_size=8, buffer_rows=16, seed=0)
    rows = np.concatenate([b["row"] for b in out])
    assert sorted(rows.tolist()) == list(range(n))  # n = 38
    assert [len(b["row"]) for b in out] == [8, 8, 8, 8, 6]  # as iter_batches(8) would cut 38 rows
    for b in out:  # the columns stay aligned row by row
        assert (b["pid"] == np.repeat(np.arange(10), [3, 6, 1, 6, 3, 3, 6, 1, 3, 6])[b["row"]]).all()


def test_prompts_stay_whole_except_the_one_cut_to_fill_a_batch():
    sizes = [6] * 12  # 72 rows; a batch of 12 holds two whole prompts, no cut needed
    out, _ = _run(sizes, per_batch=12, batch_size=12, buffer_rows=36, seed=1)
    for b in out:
        _, counts = np.unique(b["pid"], return_counts=True)
        assert counts.tolist() == [6, 6]
    # 5-row prompts into batches of 12: filling a batch cuts at most one prompt, so a prompt's rows
    # are in one batch but for at most one cut per batch
    out, _ = _run([5] * 12, per_batch=10, batch_size=12, buffer_rows=30, seed=1)
    pieces = sum(len(np.unique(b["pid"])) for b in out)
    assert [len(b["pid"]) for b in out] == [12] * 5 and 12 < pieces <= 12 + len(out) - 1


def test_order_is_seeded_and_differs_between_seeds():
    sizes = [3] * 40
    a, _ = _run(sizes, per_batch=16, batch_size=12, buffer_rows=48, seed=0)
    b, _ = _run(sizes, per_batch=16, batch_size=12, buffer_rows=48, seed=0)
    c, _ = _run(sizes, per_batch=16, batch_size=12, buffer_rows=48, seed=1)
    first = lambda out: np.concatenate([x["row"] for x in out]).tolist()  # noqa: E731
    assert first(a) == first(b)
    assert first(a) != first(c) and first(a) != list(range(120))  # shuffled, not the input order


def test_buffer_zero_still_batches_and_bad_sizes_fail():
    out, n = _run([2, 2, 2], per_batch=4, batch_size=4, buffer_rows=0, seed=0)
    assert [len(b["row"]) for b in out] == [4, 2] and n == 6
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(prompt_batches(iter([]), 0, 4, "pid", np.random.default_rng(0)))
    assert list(prompt_batches(iter([]), 4, 4, "pid", np.random.default_rng(0))) == []
