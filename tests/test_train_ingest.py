"""How fit_and_export has Ray Train hand the training datasets to its workers: with the options of the
driver's DataContext, and without Ray 2.60's deprecation warning for ExecutionOptions.exclude_resources."""

import warnings
from types import SimpleNamespace

import pytest


def test_the_shards_get_the_drivers_data_options_without_the_exclude_resources_warning(ray_session, tmp_path,
                                                                                       monkeypatch):
    import ray.data
    from ray.data import DataContext
    from ray.train import DataConfig
    from ray.train.torch import TorchTrainer

    from raypref.train_checkpoint import fit_and_export, ingest_options

    class FitReached(Exception):
        pass

    trainers = []

    def fit(self):
        trainers.append(self)
        raise FitReached

    monkeypatch.setattr(TorchTrainer, "fit", fit)
    # a setting made in the driver (ray.data_context) must reach the shards, as Ray Train's default carries it
    options = DataContext.get_current().execution_options
    flipped = not options.preserve_order
    monkeypatch.setattr(options, "preserve_order", flipped)
    ds = ray.data.from_items([{"x": i} for i in range(4)]).materialize()
    scale = SimpleNamespace(num_workers=1, use_gpu=False, cpus_per_worker=1.0)
    with pytest.raises(FitReached):
        fit_and_export(lambda config: None, scale, {}, tmp_path / "run", "ingest", "model", tmp_path / "run" / "model",
                       datasets={"train": ds}, section="train")

    # what Ray Train's dataset manager does with the trainer's DataConfig when the run starts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shards = trainers[0].data_config.configure({"train": ds}, world_size=1, worker_handles=None,
                                                   worker_node_ids=None)
    assert [str(w.message) for w in caught if "exclude_resources" in str(w.message)] == []
    assert sorted(r["x"] for r in shards[0]["train"].iter_rows()) == [0, 1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ray_default = DataConfig.default_ingest_options()
    assert ray_default.preserve_order == flipped
    assert ingest_options() == ray_default
