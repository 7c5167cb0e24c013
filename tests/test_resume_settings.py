"""What a rerun compares before it resumes a build, or keeps eval's and accuracy's scores: a judge's
retries and timeouts are not compared (untracked_args, dotted paths), the local files a generator or
scorer loads are (fingerprints)."""

import json

import pytest

from conftest import tiny_config_dict
from raypref.build import guard_build_resume
from raypref.config import ScorerConf, record_settings, renew_if_changed, validate
from raypref.resume import actor_settings, untracked_keys


def _judge(**http) -> dict:
    conf = {"base_url": "http://127.0.0.1:9/v1", "model": "vlm", "max_retries": 2, **http}
    return {"name": "j", "cls": "llm_judge", "args": {"backend": "http", "http": conf}}


def _build(tmp_path, **build):
    (tmp_path / "p.txt").write_text("a red circle\n")
    return validate(tiny_config_dict(tmp_path / "run", tmp_path / "p.txt", **build)).build


def _with_work(out):
    (out / "groups").mkdir(parents=True, exist_ok=True)
    (out / "groups" / "part-0.parquet").write_bytes(b"")  # a written shard: the guard compares


def test_a_judges_retries_and_timeouts_resume_the_build_and_its_rubric_does_not(tmp_path):
    out = tmp_path / "build"
    _with_work(out)
    guard_build_resume(_build(tmp_path, scorers=[_judge()]), out)
    # pacing and retries, whether first set or changed, resume the same build
    guard_build_resume(_build(tmp_path, scorers=[_judge(max_retries=6, max_concurrency=2, timeout_s=5.0,
                                                        connect_timeout_s=2.0, backoff_s=0.5, max_backoff_s=9.0)]), out)
    assert "max_retries" not in (out / "build_settings.json").read_text()
    with pytest.raises(ValueError, match=r"build\.scorers\.0\.args\.http\.temperature: \(not set\) -> '0\.7'.*would mix"):
        guard_build_resume(_build(tmp_path, scorers=[_judge(temperature=0.7)]), out)


def test_a_build_record_from_before_untracked_args_still_resumes(tmp_path):
    out = tmp_path / "build"
    _with_work(out)
    guard_build_resume(_build(tmp_path, scorers=[_judge()]), out)
    record = out / "build_settings.json"
    old = json.loads(record.read_text())  # as the code before wrote it: every arg, no file fingerprints
    old["build.scorers.0.args.http.max_retries"] = 2
    record.write_text(json.dumps({k: v for k, v in old.items() if not k.startswith("files")}))
    guard_build_resume(_build(tmp_path, scorers=[_judge(max_retries=6)]), out)
    assert any(k.startswith("files.") for k in json.loads(record.read_text()))  # compared from now on


def test_a_lora_retrained_in_place_refuses_the_build_rerun(tmp_path):
    lora = tmp_path / "train" / "lora"
    lora.mkdir(parents=True)
    (lora / "adapter.safetensors").write_bytes(b"first")
    gen = tiny_config_dict(tmp_path, tmp_path / "p.txt")["build"]["generators"][0]
    out = tmp_path / "build"
    _with_work(out)
    b = _build(tmp_path, generators=[{**gen, "lora": str(lora)}])
    guard_build_resume(b, out)
    guard_build_resume(b, out)  # nothing changed (tiny:sd, tiny:clip and the LoRA): resumes
    (lora / "adapter.safetensors").write_bytes(b"retrained")
    with pytest.raises(ValueError, match=r"files\.generators\.tiny\.lora: '\w+' -> '\w+'.*would mix"):
        guard_build_resume(b, out)


def test_a_scorers_model_file_replaced_in_place_refuses_the_build_rerun(tmp_path):
    head = tmp_path / "head.safetensors"
    head.write_bytes(b"one")
    scorer = {"name": "aes", "cls": "aesthetic", "model": "tiny:clip", "args": {"head": str(head)}}
    out = tmp_path / "build"
    _with_work(out)
    b = _build(tmp_path, scorers=[scorer])
    guard_build_resume(b, out)
    head.write_bytes(b"other weights")
    with pytest.raises(ValueError, match=r"files\.scorers\.aes\.args\.head"):
        guard_build_resume(b, out)


def test_actor_settings_leave_out_a_judges_dotted_untracked_args(tmp_path):
    conf = ScorerConf.model_validate(_judge())
    before = actor_settings(conf)
    assert actor_settings(ScorerConf.model_validate(_judge(max_retries=6, max_concurrency=2, timeout_s=5.0))) == before
    assert actor_settings(ScorerConf.model_validate(_judge(temperature=0.7))) != before
    # eval's and accuracy's records from before: the retries they hold are ignored, the scores kept
    record = tmp_path / "side" / "settings.json"
    old = ScorerConf.model_validate(_judge()).model_dump(mode="json")
    kept = ("pool", "weight", "normalize", "value_range")
    record_settings(record, {"config": {k: v for k, v in old.items() if k not in kept}, "files": {}})
    (tmp_path / "side" / "scores.parquet").write_bytes(b"")
    changed = ScorerConf.model_validate(_judge(max_retries=6))
    renew_if_changed(record, actor_settings(changed), "[eval] base", untracked_keys(changed, "config.args"))
    assert (tmp_path / "side" / "scores.parquet").exists()


def test_a_finished_judge_build_rerun_with_more_retries_resumes_and_asks_nothing(ray_session, tmp_path, tiny_sd):
    from raypref.build import run_build
    from tests.test_llm_judge import JudgeServer, scripted

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle case:ok\na blue square case:ok\n")
    with JudgeServer(scripted) as server:
        judge = {**_judge(), "pool": {"batch_size": 4, "num_cpus": 0.5}}
        judge["args"]["http"]["base_url"] = server.base_url
        jpeg = tiny_config_dict(tmp_path, prompts)["build"]["scorers"][1]  # judged all alike: jpeg tells images apart
        d = tiny_config_dict(tmp_path / "run", prompts, scorers=[judge, jpeg])
        run_build(validate(d))
        asked = sum(server.seen.values())
        assert asked == 8  # 2 prompts, 4 images each
        d["build"]["scorers"][0]["args"]["http"].update(max_retries=6, max_concurrency=2)
        run_build(validate(d))
        assert sum(server.seen.values()) == asked  # the stored groups resumed: no request repeated


def test_relabel_resumes_after_a_judges_retries_change_and_refuses_another_rubric(tmp_path):
    from raypref.relabel import guard_relabel_resume
    from tests.test_formats import GREEN, RED, relabel_config, write_pickapic_file

    f = tmp_path / "human.parquet"
    write_pickapic_file(f, [("p", RED, GREEN, 1.0, "a", "b", "m", "m")])

    def cfg(**http):
        d = relabel_config(tmp_path, f).model_dump(mode="json")
        d["build"]["scorers"] = [_judge(**http)]
        return validate(d)

    out = tmp_path / "run" / "relabel"
    (out / "pairs").mkdir(parents=True)
    (out / "pairs" / "part-0.parquet").write_bytes(b"")  # labelled pairs: the guard compares
    guard_relabel_resume(cfg(), out)
    guard_relabel_resume(cfg(max_retries=6, max_concurrency=2), out)
    with pytest.raises(ValueError, match=r"relabel: .*build\.scorers\.0\.args\.http\.temperature"):
        guard_relabel_resume(cfg(temperature=0.7), out)


def test_a_key_added_to_a_record_is_accepted_once_then_compared(tmp_path):
    """settings_changed only reads: a record made before a key of added= gains it through record_added,
    which the stages that keep the work call."""
    from raypref.config import record_added, settings_changed

    record = tmp_path / "settings.json"
    record.write_text(json.dumps({"a": 1}))  # from before "files" was recorded
    mine = {"a": 1, "files": {"m": "f1"}}
    assert settings_changed(record, mine, added=("files",)) is None
    assert settings_changed(record, mine, added=("files",)) is None  # a query: it changes nothing
    assert json.loads(record.read_text()) == {"a": 1}
    record_added(record, mine, added=("files",))
    assert json.loads(record.read_text()) == {"a": 1, "files.m": "f1"}  # compared from now on
    assert settings_changed(record, {"a": 1, "files": {"m": "f2"}}, added=("files",)) == "files.m: 'f1' -> 'f2'"
    # another change: the old record is not rewritten, and a key one side lacks reads as not set
    record.write_text(json.dumps({"a": 1}))
    assert settings_changed(record, {"a": 2, "files": {"m": "f1"}}, added=("files",)) == "a: '1' -> '2'"
    record_added(record, {"a": 2, "files": {"m": "f1"}}, added=("files",))
    assert json.loads(record.read_text()) == {"a": 1}
    assert settings_changed(record, {"a": 1, "b": 2}) == "b: (not set) -> '2'"
    assert settings_changed(record, {"c": None}) == "a: '1' -> (not set)"
    # a value once worked out otherwise: accepted while the record holds the earlier form of it
    record.write_text(json.dumps({"a": 1, "files": "old"}))
    assert settings_changed(record, {"a": 1, "files": "new"}, added={"files": "other"}) == "files: 'old' -> 'new'"
    assert settings_changed(record, {"a": 1, "files": "new"}, added={"files": "old"}) is None
    assert json.loads(record.read_text()) == {"a": 1, "files": "old"}
    record_added(record, {"a": 1, "files": "new"}, added={"files": "old"})
    assert json.loads(record.read_text()) == {"a": 1, "files": "new"}
    record_added(tmp_path / "none.json", mine, added=("files",))  # nothing recorded: nothing written
    assert not (tmp_path / "none.json").exists()


def test_relabel_compares_its_scorers_files_and_takes_an_older_record_once(tmp_path):
    from raypref.relabel import SETTINGS_FILE, guard_relabel_resume
    from tests.test_formats import GREEN, RED, relabel_config, write_pickapic_file

    f, head = tmp_path / "human.parquet", tmp_path / "head.safetensors"
    write_pickapic_file(f, [("p", RED, GREEN, 1.0, "a", "b", "m", "m")])
    head.write_bytes(b"one")
    d = relabel_config(tmp_path, f).model_dump(mode="json")
    d["build"]["scorers"] = [{"name": "aes", "cls": "aesthetic", "model": "tiny:clip", "args": {"head": str(head)}}]
    cfg = validate(d)
    out = tmp_path / "run" / "relabel"
    (out / "pairs").mkdir(parents=True)
    (out / "pairs" / "part-0.parquet").write_bytes(b"")  # labelled pairs: the guard compares
    guard_relabel_resume(cfg, out)
    record = out / SETTINGS_FILE
    recorded = json.loads(record.read_text())
    assert "files.scorers.aes.args.head" in recorded
    guard_relabel_resume(cfg, out)  # nothing changed: resumes
    # a record from before the scorers' files were fingerprinted resumes, and compares them from then on
    record.write_text(json.dumps({k: v for k, v in recorded.items() if not k.startswith("files")}))
    guard_relabel_resume(cfg, out)
    assert json.loads(record.read_text()) == recorded
    head.write_bytes(b"retrained in place")
    with pytest.raises(ValueError, match=r"relabel: .*files\.scorers\.aes\.args\.head: '\w+' -> '\w+'.*would mix"):
        guard_relabel_resume(cfg, out)


def test_an_import_recorded_before_its_input_files_is_kept_once_then_compared(tmp_path):
    from raypref.relabel import IMPORT_DONE, import_pairs
    from tests.test_formats import GREEN, RED, relabel_config, write_pickapic_file

    f = tmp_path / "human.parquet"
    write_pickapic_file(f, [("p", RED, GREEN, 1.0, "a", "b", "m", "m")])
    cfg, out = relabel_config(tmp_path, f), tmp_path / "run" / "relabel"
    assert import_pairs(cfg, out)[0] == 1
    done = out / IMPORT_DONE
    recorded = json.loads(done.read_text())
    shard = next((out / "imported").glob("part-*.parquet"))
    written = shard.stat().st_mtime_ns
    done.write_text(json.dumps({k: v for k, v in recorded.items() if k != "relabel.input_files"}))
    assert import_pairs(cfg, out)[0] == 1
    assert shard.stat().st_mtime_ns == written and json.loads(done.read_text()) == recorded  # kept; compared from now on
