"""A run its input checks refuse leaves output_dir as it was: no config.yaml, run_meta.json, resume record
or dir of its own, and an earlier run's left untouched (README, "Running the stages")."""

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypref import schema as S
from tests.test_llm_judge import KEY_ENV, http_args
from tests.test_reward_model import synthetic_pairs

JUDGE = json.dumps({"name": "j", "cls": "llm_judge", "args": http_args("http://127.0.0.1:9/v1")})

# (stage, its overrides ({d}: the test's dir), an earlier run's files the rerun must leave, the error)
CASES = {
    "build-judge-key": ("build", [f"build.scorers=[{JUDGE}]"], ["build/build_settings.json"], KEY_ENV),
    "rank-no-input": ("rank", ["rank.input={d}/nope"], [], "rank.input: no pairs at"),
    "relabel-judge-key": ("relabel", ["relabel.input={d}/pairs/a", "relabel.format=raypref",
                                      f"build.scorers=[{JUDGE}]"], ["relabel/relabel_settings.json"], KEY_ENV),
    "dpo-no-pairs": ("train_dpo", ["train.pairs={d}/nope"], ["train/ray/dpo/raypref_run.json"], "train.pairs: no pairs"),
    "sft-no-samples": ("train_sft", ["train.samples={d}/nope"], ["train/ray/sft/raypref_run.json"],
                       "train.samples: no samples"),
    "refl-no-prompts": ("train_refl", ["train.refl.scorer=clip", "train.refl.prompts={d}/nope.txt"],
                        ["train/ray/refl/raypref_run.json"], "train.refl.prompts: prompts file not found"),
    "reward-no-pairs": ("train_reward", ["reward.pairs={d}/nope"], ["reward/ray/reward/raypref_run.json"],
                        "reward.pairs: no pairs"),
    "reward-bad-backbone": ("train_reward", ["reward.pairs={d}/pairs/a", "reward.backbone={d}/nope"],
                            ["reward/ray/reward/raypref_run.json"], "reward.backbone: model path does not exist"),
    "pcclip-no-samples": ("train_pcclip", ["pcclip.samples={d}/nope"], ["pcclip/ray/pcclip/raypref_run.json"],
                          "pcclip.samples: no samples"),
    "pcclip-bad-tag": ("train_pcclip", ["pcclip.samples={d}/samples", "pcclip.pretrained=no-such-tag"],
                       ["pcclip/ray/pcclip/raypref_run.json"], "pcclip.pretrained: 'no-such-tag' is neither"),
    "pretrain-t2i-users-dir": ("pretrain_t2i", ["pretrain.t2i.export_dir={d}/mine"],
                               ["pretrain/t2i/ray/t2i/raypref_run.json"], "pretrain.t2i.export_dir: .* did not export to"),
    "pretrain-clip-users-dir": ("pretrain_clip", ["pretrain.clip.export_dir={d}/mine"],
                                ["pretrain/clip_run/ray/clip/raypref_run.json"], "pretrain.clip.export_dir: .* did not export to"),
}
# where each stage writes its config.yaml and run_meta.json
META_DIR = {"train_dpo": "train", "train_sft": "train", "train_refl": "train", "train_reward": "reward",
            "train_pcclip": "pcclip", "pretrain_t2i": "pretrain/t2i", "pretrain_clip": "pretrain/clip_run"}


def _listing(d):
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


@pytest.fixture
def no_ray(monkeypatch, ray_refused):
    """Starting Ray fails the test (every case fails before it), and no judge key is set."""
    from raypref import session

    for var in (KEY_ENV, "RAY_ADDRESS", session.LOCAL_RAY_ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("earlier", [False, True], ids=["new", "earlier-run"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_run_leaves_output_dir_as_it_was(case, earlier, tmp_path, no_ray):
    from raypref import stages
    from raypref.config import load_config
    from raypref.relabel import relabel

    stage, overrides, records, error = CASES[case]
    synthetic_pairs(tmp_path / "pairs", n_prompts=4)
    (tmp_path / "samples").mkdir()
    pq.write_table(pa.table({S.SAMPLE_ID: ["s0"], S.PROMPT_ID: ["p0"], S.PROMPT: ["a"],
                             S.IMAGE: [b"never read"]}), tmp_path / "samples" / "p.parquet")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's folder")
    out = tmp_path / "run"
    out.mkdir()
    if earlier:  # an earlier run's config and records (no checkpoints: a rerun may go ahead), as they were
        meta = META_DIR.get(stage, stage)
        for f in [f"{meta}/config.yaml", f"{meta}/run_meta.json", *records]:
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            (out / f).write_text('{"earlier": "run"}\n')
    before = _listing(out)
    run = {"relabel": relabel, "pretrain_t2i": lambda c: stages.pretrain(c, "t2i"),
           "pretrain_clip": lambda c: stages.pretrain(c, "clip")}.get(stage) or getattr(stages, stage)
    cfg = load_config(None, [f"output_dir={out}", *(o.replace("{d}", str(tmp_path)) for o in overrides)])
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        run(cfg)
    assert _listing(out) == before


@pytest.mark.parametrize("stage", ["train_reward", "train_pcclip"])
def test_a_rerun_with_other_settings_is_refused_before_ray(stage, tmp_path, no_ray, tiny_clip):
    from raypref import stages
    from raypref.config import load_config
    from raypref.train_checkpoint import guard_resume

    synthetic_pairs(tmp_path / "pairs", n_prompts=4)
    (tmp_path / "samples").mkdir()
    pq.write_table(pa.table({S.SAMPLE_ID: ["s0"], S.PROMPT_ID: ["p0"], S.PROMPT: ["a"],
                             S.IMAGE: [b"never read"]}), tmp_path / "samples" / "p.parquet")
    section = {"train_reward": "reward", "train_pcclip": "pcclip"}[stage]
    data = {"reward": [f"reward.pairs={tmp_path}/pairs/a", f"reward.backbone={tiny_clip}", "reward.backbone_pretrained=null"],
            "pcclip": [f"pcclip.samples={tmp_path}/samples", f"pcclip.model={tiny_clip}", "pcclip.pretrained=null"]}[section]
    out = tmp_path / "run"
    earlier = load_config(None, [f"output_dir={out}", *data])
    # an earlier run's record and a checkpoint: these reward/pcclip runs counted their data with Ray first
    guard_resume(earlier.stage_dir(section), section, section, getattr(earlier, section).model_dump(mode="json"))
    (earlier.stage_dir(section) / "ray" / section / "checkpoint_000001").mkdir(parents=True)
    before = _listing(out)
    cfg = load_config(None, [f"output_dir={out}", *data, f"{section}.seed=7"])
    with pytest.raises(ValueError, match=rf"{section}: .* other settings \({section}\.seed: '0' -> '7'\)"):
        getattr(stages, stage)(cfg)
    assert _listing(out) == before
