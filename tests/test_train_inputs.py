"""The training stages check their inputs before they start Ray, and refuse a worker count the data
cannot feed before Ray Train starts (a worker with no rows would fail only once it had loaded its model),
or one that, with the data it streams, does not fit the Ray (it would wait for ever)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypref import schema as S
from raypref.config import validate
from raypref.train_checkpoint import check_rows_per_worker
from tests.test_reward_model import _cfg as reward_cfg
from tests.test_reward_model import synthetic_pairs


def test_rows_per_worker_hand_values():
    check_rows_per_worker(4, "pairs", 4, "train.num_workers")  # one each
    check_rows_per_worker(16, "images", 2, "pcclip.num_workers", per_worker=8)
    with pytest.raises(ValueError, match=r"train.num_workers=4: 3 pairs give each worker 0, and each needs at least "
                                         r"one row; lower train.num_workers, or train on more data"):
        check_rows_per_worker(3, "pairs", 4, "train.num_workers")
    # Ray Train splits evenly and leaves the remainder out: 15 rows are 7 a worker, not 8
    with pytest.raises(ValueError, match=r"give each worker 7, and each needs at least 8 rows \(pcclip.batch_size\)"):
        check_rows_per_worker(15, "images", 2, "pcclip.num_workers", per_worker=8, why=" (pcclip.batch_size)")
    with pytest.raises(ValueError, match=r"needs at least 8 rows; train on more data$"):  # one worker: nothing to lower
        check_rows_per_worker(5, "images", 1, "pcclip.num_workers", per_worker=8)


@pytest.fixture
def no_ray(monkeypatch):
    """Starting Ray fails the test: what it checks must come first."""
    def refuse(*a, **k):
        raise AssertionError("Ray was started before the inputs were checked")

    import raypref.session
    import raypref.train_dpo
    import raypref.train_pcclip

    for module in (raypref.session, raypref.train_dpo, raypref.train_pcclip):
        monkeypatch.setattr(module, "init_ray", refuse)


def _train_cfg(tmp_path, tiny_sd, **train):
    return validate({"output_dir": str(tmp_path / "run"), "train": {"base_model": tiny_sd, **train}})


def test_dpo_and_sft_refuse_more_workers_than_rows_before_ray(tmp_path, tiny_sd, no_ray):
    from raypref.train_dpo import run_train_dpo
    from raypref.train_sft import run_train_sft

    synthetic_pairs(tmp_path / "pairs", n_prompts=6)  # 6 pairs in pairs/a, one of them a tie
    with pytest.raises(FileNotFoundError, match="train.pairs: no pairs at"):
        run_train_dpo(_train_cfg(tmp_path, tiny_sd, pairs=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match=r"train.num_workers=8: 5 strict pairs give each worker 0"):
        run_train_dpo(_train_cfg(tmp_path, tiny_sd, pairs=str(tmp_path / "pairs" / "a"), num_workers=8))

    (tmp_path / "samples").mkdir()
    pq.write_table(pa.table({S.SAMPLE_ID: ["s0", "s1", "s2"], S.PROMPT_ID: ["p0", "p0", "p1"],
                             S.PROMPT: ["a", "a", "b"], S.SCORE: [0.1, 0.9, 0.5],
                             S.IMAGE: [b"never read"] * 3}),
                   tmp_path / "samples" / "part-0.parquet")
    with pytest.raises(ValueError, match=r"train.num_workers=4: 3 kept images give each worker 0"):
        run_train_sft(_train_cfg(tmp_path, tiny_sd, samples=str(tmp_path / "samples"), sft_top_p=1.0, num_workers=4))


def test_reward_and_pcclip_check_columns_before_ray(tmp_path, no_ray):
    from raypref.train_pcclip import run_train_pcclip
    from raypref.train_reward import run_train_reward

    table = synthetic_pairs(tmp_path / "pairs", n_prompts=4)
    (tmp_path / "thin").mkdir()
    pq.write_table(table.drop_columns([S.REJECTED_IMAGE]), tmp_path / "thin" / "p.parquet")
    with pytest.raises(ValueError, match=r"reward.pairs: .*thin lacks columns \['rejected_image'\]"):
        run_train_reward(reward_cfg(tmp_path / "run", tmp_path / "thin"))
    (tmp_path / "samples").mkdir()
    pq.write_table(pa.table({S.SAMPLE_ID: ["s0"], S.PROMPT: ["a"]}), tmp_path / "samples" / "p.parquet")
    cfg = validate({"output_dir": str(tmp_path / "run"), "pcclip": {"samples": str(tmp_path / "samples")}})
    with pytest.raises(ValueError, match=r"pcclip.samples: .* has no column\(s\) \['prompt_id', 'image'\]"):
        run_train_pcclip(cfg)


def test_reward_and_pcclip_refuse_more_workers_than_rows(ray_session, tmp_path, tiny_clip):
    from raypref.train_pcclip import run_train_pcclip
    from raypref.train_reward import run_train_reward

    table = synthetic_pairs(tmp_path / "pairs", n_prompts=8)
    with pytest.raises(ValueError, match=r"reward.num_workers=64: \d+ training pairs give each worker 0"):
        run_train_reward(reward_cfg(tmp_path / "run", tmp_path / "pairs" / "a", num_workers=64))
    assert not (tmp_path / "run").exists()  # refused once Ray counted the pairs, before anything was written
    (tmp_path / "samples").mkdir()
    ids = table.column(S.CHOSEN_ID).to_pylist()
    pq.write_table(pa.table({S.SAMPLE_ID: ids, S.PROMPT_ID: table.column(S.PROMPT_ID), S.PROMPT: table.column(S.PROMPT),
                             S.IMAGE: table.column(S.CHOSEN_IMAGE)}), tmp_path / "samples" / "p.parquet")
    cfg = validate({"output_dir": str(tmp_path / "run2"), "pcclip": {
        "samples": str(tmp_path / "samples"), "model": tiny_clip, "batch_size": 16, "num_workers": 2}})
    with pytest.raises(ValueError, match=r"pcclip.num_workers=2: \d+ training images in .* give each worker \d, and "
                                         r"each needs at least 16 rows \(pcclip.batch_size\)"):
        run_train_pcclip(cfg)
    assert not (tmp_path / "run2").exists()


def test_reward_refuses_more_workers_than_heldout_pairs(ray_session, tmp_path, tiny_clip):
    from raypref.train_reward import heldout_mask, run_train_reward

    table = synthetic_pairs(tmp_path / "pairs", n_prompts=8)
    ids = table.slice(0, 8).column(S.PROMPT_ID).to_pylist()  # dir "a": the first half
    n_held = int(heldout_mask(ids, 0.25).sum())
    workers = n_held + 1
    assert 0 < n_held and len(ids) - n_held >= workers  # training pairs enough, held-out ones not
    # Ray Train would give each worker no held-out pair: every evaluation NaN over 0 pairs
    with pytest.raises(ValueError, match=rf"reward.num_workers={workers}: {n_held} held-out pairs give each worker 0, "
                                         r"and each needs at least one row \(reward.heldout_fraction=0.25\)"):
        run_train_reward(reward_cfg(tmp_path / "run", tmp_path / "pairs" / "a", num_workers=workers))


def test_reward_and_pcclip_refuse_a_users_export_dir_before_ray(tmp_path, no_ray):
    from raypref.train_pcclip import run_train_pcclip
    from raypref.train_reward import run_train_reward

    synthetic_pairs(tmp_path / "pairs", n_prompts=4)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("a user's folder")
    with pytest.raises(ValueError, match=rf"reward.export_dir: {mine} is a directory raypref did not export to"):
        run_train_reward(reward_cfg(tmp_path / "run", tmp_path / "pairs" / "a", export_dir=str(mine)))
    cfg = validate({"output_dir": str(tmp_path / "run"), "pcclip": {"samples": str(tmp_path / "nope"),
                                                                     "export_dir": str(mine)}})
    with pytest.raises(ValueError, match=rf"pcclip.export_dir: {mine} is a directory raypref did not export to"):
        run_train_pcclip(cfg)
    assert (mine / "keep.txt").read_text() == "a user's folder"


@pytest.fixture
def fit_reached(monkeypatch):
    """Ray Train's fit raises this instead of training: what is checked before it must come first (a Ray
    that cannot feed the workers would otherwise wait for ever)."""
    from ray.train.torch import TorchTrainer

    class FitReached(Exception):
        pass

    def fit(self):
        raise FitReached

    monkeypatch.setattr(TorchTrainer, "fit", fit)
    return FitReached


def test_workers_and_streamed_data_must_fit_the_ray_before_training(ray_session, tmp_path, tiny_sd, fit_reached,
                                                                   monkeypatch, capsys):
    # the session's Ray has 8 CPUs; data that streams (cache_*_max_mb=0) runs Ray Data read tasks, 1 CPU each,
    # while the workers hold theirs: with none left over they would wait for ever for their first batch, and
    # workers that alone do not fit would never start
    import ray

    from raypref import session
    from raypref.config import ConfigError
    from raypref.train_dpo import run_train_dpo
    from raypref.train_reward import run_train_reward

    synthetic_pairs(tmp_path / "pairs")
    both = [str(tmp_path / "pairs" / "a"), str(tmp_path / "pairs" / "b")]
    assert session.started_here()
    with pytest.raises(ConfigError, match=r"^reward: the training workers and the data they stream need 9 CPUs "
                                          r"at once \(reward.num_workers x reward.cpus_per_worker = 8 x 1, and a "
                                          r"read task 1 for the datasets eval, train, read from the files as training "
                                          r"goes\) where this Ray has 8: .*Lower reward.num_workers or "
                                          r"reward.cpus_per_worker .*raise ray.num_cpus .*raise "
                                          r"reward.cache_pairs_max_mb above its size"):
        run_train_reward(reward_cfg(tmp_path / "r1", both, num_workers=8, cache_pairs_max_mb=0))
    with pytest.raises(ConfigError, match=r"^dpo: .* need 8.5 CPUs at once \(train.num_workers x "
                                          r"train.cpus_per_worker = 5 x 1.5, and a read task 1 for the dataset "
                                          r"train, read "):
        run_train_dpo(_train_cfg(tmp_path / "d1", tiny_sd, pairs=both[0], num_workers=5, cpus_per_worker=1.5,
                                 cache_pairs_max_mb=0))
    with pytest.raises(fit_reached):  # 7 workers leave the read task its CPU
        run_train_dpo(_train_cfg(tmp_path / "d2", tiny_sd, pairs=both[0], num_workers=7, cache_pairs_max_mb=0))
    with pytest.raises(fit_reached):  # held in the object store, the data runs no task beside the workers
        run_train_reward(reward_cfg(tmp_path / "r2", both, num_workers=8))
    with pytest.raises(ConfigError, match=r"^reward: the training workers need 9 CPUs at once \(reward.num_workers x "
                                          r"reward.cpus_per_worker = 9 x 1\) where this Ray has 8: they would never "
                                          r"start.*raise ray.num_cpus \([^;]*$"):  # no cache key: it would not help
        run_train_reward(reward_cfg(tmp_path / "r3", both, num_workers=9))
    # one GPU worker more than the Ray has GPUs (none here) would never be placed
    gpus = int(ray.cluster_resources().get("GPU", 0))
    with pytest.raises(ConfigError, match=rf"^dpo: train.use_gpu gives each of the train.num_workers = {gpus + 1} "
                                          rf"workers a GPU, where this Ray has {gpus}: they would never start.*"
                                          r"train.use_gpu=false$"):
        run_train_dpo(_train_cfg(tmp_path / "d4", tiny_sd, pairs=both[0], use_gpu=True, num_workers=gpus + 1))
    monkeypatch.setenv(session.LOCAL_RAY_ENV, "0")  # a joined cluster's autoscaler may add nodes: a warning only
    with pytest.raises(fit_reached):
        run_train_dpo(_train_cfg(tmp_path / "d3", tiny_sd, pairs=both[0], num_workers=8, cache_pairs_max_mb=0))
    assert "[ray] warning: dpo: the training workers and the data they stream need 9 CPUs" in capsys.readouterr().out
