"""The accuracy harness resumes: a run that failed part-way scores only the pairs not yet written,
a rerun keeps every scorer's stored scores, an added scorer is the only one scored, and a scorer
whose settings changed is scored again."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raypref import schema as S
from raypref.config import validate
from raypref.pref_accuracy import run_accuracy
from tests.test_reward_model import synthetic_pairs


def _cfg(tmp_path: Path, scorers: list[dict]):
    return validate({"output_dir": str(tmp_path / "acc"), "accuracy": {
        "pairs": str(tmp_path / "pairs" / "a"), "format": "raypref", "shard_size": 4, "scorers": scorers}})


def _mtimes(d: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in d.glob("*.parquet")}


def test_accuracy_resumes_and_keeps_each_scorers_scores(ray_session, tmp_path, capsys):
    table = synthetic_pairs(tmp_path / "pairs", n_prompts=8)  # 16 pairs; dir a holds the first 8 (2 shards of 4)
    log, flag = tmp_path / "scored.log", tmp_path / "fail"
    jpeg = {"name": "jpeg", "cls": "jpeg_compressibility", "pool": {"batch_size": 4, "num_cpus": 0.5}}
    out = tmp_path / "acc" / "accuracy"
    flaky = {"name": "flaky", "cls": "tests.flaky_scorer:FlakyJpeg", "pool": {"batch_size": 4, "num_cpus": 0.5},
             "args": {"log": str(log), "flag": str(flag), "fail_after_lines": 8, "after": str(out / "scorers" / "flaky" / "scores")}}

    flag.touch()
    with pytest.raises(Exception, match="failing after 8 logged prompts"):
        run_accuracy(_cfg(tmp_path, [jpeg, flaky]))
    first = log.read_text().splitlines()
    assert len(first) == 8  # one shard's 4 pairs, both images each: scored and written, then the crash
    assert pq.read_table(out / "scorers" / "flaky" / "scores").num_rows == 4
    jpeg_files = _mtimes(out / "scorers" / "jpeg" / "scores")
    assert pq.read_table(out / "scorers" / "jpeg" / "scores").num_rows == 8

    flag.unlink()
    capsys.readouterr()
    r = run_accuracy(_cfg(tmp_path, [jpeg, flaky]))
    out_lines = capsys.readouterr().out.splitlines()  # what this run scores, not every staged pair
    assert "[accuracy] 1 of 2 scorers' scores kept from an earlier run" in out_lines
    assert "[accuracy] flaky: scoring 4 of 8 pairs (4 stored)" in out_lines
    second = log.read_text().splitlines()[len(first):]
    assert len(second) == 8 and not set(second) & set(first)  # only the shard the crash left
    assert set(first) | set(second) == set(table.column(S.PROMPT).to_pylist()[:8])
    assert _mtimes(out / "scorers" / "jpeg" / "scores") == jpeg_files  # done before the crash: not scored again
    rows = {x["scorer"]: x for x in r["rows"]}
    # the same images, scored the same way in two runs: the stitched scores agree
    assert rows["flaky"]["accuracy"] == rows["jpeg"]["accuracy"] and rows["jpeg"]["pairs"] == 7  # one tie excluded
    scores = pq.read_table(out / "scores.parquet")
    assert scores.num_rows == 8 and scores.column("chosen_score_flaky").to_pylist() == scores.column("chosen_score_jpeg").to_pylist()
    assert not (out / "staged").exists()

    # a finished run's rerun with one scorer added and one changed: only those two are scored,
    # from the pairs staged again, and the kept scores still line up with them
    kept = _mtimes(out / "scorers" / "jpeg" / "scores")
    hard = {**jpeg, "name": "jpeg50", "args": {"quality": 50}}
    changed = {**flaky, "args": {**flaky["args"], "fail_after_lines": 1000}}
    r3 = run_accuracy(_cfg(tmp_path, [jpeg, changed, hard]))
    out_lines = capsys.readouterr().out.splitlines()
    assert "[accuracy] flaky: scoring 8 pairs" in out_lines and "[accuracy] jpeg50: scoring 8 pairs" in out_lines
    assert _mtimes(out / "scorers" / "jpeg" / "scores") == kept
    assert len(log.read_text().splitlines()) == len(first) + len(second) + 16  # the changed scorer: every pair again
    assert {x["scorer"] for x in r3["rows"]} == {"jpeg", "flaky", "jpeg50"} and all(x["pairs"] == 7 for x in r3["rows"])
    assert r3["pairs_read"] == 8 and not (out / "staged").exists()

    # another limit on the same input keeps every stored score: the first rows are the same pairs
    logged = len(log.read_text().splitlines())
    r4 = run_accuracy(validate({**_cfg(tmp_path, [jpeg, changed, hard]).model_dump(mode="json"),
                                "accuracy": {**_cfg(tmp_path, [jpeg, changed, hard]).accuracy.model_dump(mode="json"), "limit": 6}}))
    assert r4["pairs_read"] == 6 and len(log.read_text().splitlines()) == logged
    assert _mtimes(out / "scorers" / "jpeg" / "scores") == kept and pq.read_table(out / "scores.parquet").num_rows == 6

    # the same path, another input: every scorer is scored again
    pq.write_table(pq.read_table(tmp_path / "pairs" / "b"), tmp_path / "pairs" / "a" / "part-0.parquet")
    capsys.readouterr()
    r5 = run_accuracy(_cfg(tmp_path, [jpeg, changed, hard]))
    assert f"[accuracy] {tmp_path / 'pairs' / 'a'}: the input changed (accuracy.files: " in capsys.readouterr().out
    assert len(log.read_text().splitlines()) == logged + 16 and _mtimes(out / "scorers" / "jpeg" / "scores") != kept
    scored = pq.read_table(out / "scores.parquet").column(S.CHOSEN_ID).to_pylist()
    assert sorted(scored) == sorted(table.column(S.CHOSEN_ID).to_pylist()[8:]) and r5["pairs_read"] == 8


def test_actor_settings_see_what_the_actor_reads_and_its_files(tmp_path):
    from raypref.config import PoolConf, ScorerConf
    from raypref.resume import actor_settings

    head = tmp_path / "head.safetensors"
    head.write_bytes(b"one")
    conf = ScorerConf(name="a", cls="aesthetic", model="tiny:clip", args={"head": str(head), "mode": "fast"})
    before = actor_settings(conf)
    # how the build aggregates and the pool do not change a score
    assert actor_settings(conf.model_copy(update={"weight": 0.2, "normalize": "rank", "pool": PoolConf(batch_size=3)})) == before
    assert set(before["files"]) == {"args.head"}  # tiny:clip and "fast" name no local file
    head.write_bytes(b"other weights")  # re-exported in place
    assert actor_settings(conf) != before


def test_an_image_added_beside_a_json_input_scores_every_scorer_again(tmp_path, capsys):
    """HPD v2 test.json reads its images from test/: one added there is a change of the input, though
    the JSON is the same file, so the stored scores go and every pair is staged again."""
    from raypref.formats import write_pairs
    from raypref.pref_accuracy import staged_pairs
    from tests.test_formats import SOURCE

    write_pairs(SOURCE, tmp_path / "h", "hpdv2", split="test")
    image = tmp_path / "h" / "test" / "s-noise.png"
    data = image.read_bytes()
    image.unlink()  # its pair is quarantined
    cfg = validate({"output_dir": str(tmp_path / "acc"), "accuracy": {
        "pairs": str(tmp_path / "h" / "test.json"), "format": "hpdv2",
        "scorers": [{"name": "jpeg", "cls": "jpeg_compressibility"}]}})
    out = tmp_path / "acc" / "accuracy"
    out.mkdir(parents=True)
    keys, counts = staged_pairs(cfg, out, images=True)
    assert (keys.num_rows, counts["quarantined"]) == (2, 1)
    stored = out / "scorers" / "jpeg" / "settings.json"  # as a scorer's run leaves it
    stored.parent.mkdir(parents=True)
    stored.write_text("{}")
    capsys.readouterr()
    assert staged_pairs(cfg, out, images=True)[0].num_rows == 2 and stored.is_file()  # nothing changed: kept
    assert "input changed" not in capsys.readouterr().out
    image.write_bytes(data)
    keys, counts = staged_pairs(cfg, out, images=True)
    assert (keys.num_rows, counts["quarantined"]) == (3, 0) and not stored.exists()
    said = capsys.readouterr().out  # why the stored scores went: the files' fingerprint, old -> new
    assert f"[accuracy] {tmp_path / 'h' / 'test.json'}: the input changed (accuracy.files: '" in said
    assert "; every scorer is scored again" in said


def test_accuracy_reads_hpdv2_images_from_image_root_and_sees_them_change(tmp_path):
    """accuracy.image_root: HPD v2 images kept apart from the JSON are read from there, and an image
    changed there is a change of the input (the pairs staged again); another format refuses the key."""
    from raypref.config import ConfigError
    from raypref.formats import write_pairs
    from raypref.pref_accuracy import staged_pairs
    from tests.test_formats import SOURCE

    write_pairs(SOURCE, tmp_path / "h", "hpdv2", split="test")
    (tmp_path / "h" / "test").rename(tmp_path / "images")  # not where the layout puts them
    acc = {"pairs": str(tmp_path / "h" / "test.json"), "format": "hpdv2", "scorers": [{"name": "jpeg", "cls": "jpeg_compressibility"}]}
    cfg = validate({"output_dir": str(tmp_path / "acc"), "accuracy": {**acc, "image_root": str(tmp_path / "images")}})
    out = tmp_path / "acc" / "accuracy"
    out.mkdir(parents=True)
    keys, counts = staged_pairs(cfg, out, images=True)
    assert (keys.num_rows, counts["quarantined"]) == (3, 0)
    (tmp_path / "images" / "s-noise.png").unlink()  # the JSON unchanged
    keys, counts = staged_pairs(cfg, out, images=True)
    assert (keys.num_rows, counts["quarantined"]) == (2, 1)
    with pytest.raises(ConfigError, match=r"accuracy\.image_root: only accuracy\.format 'hpdv2' reads it, not 'pickapic'"):
        validate({"accuracy": {**acc, "format": "pickapic", "image_root": str(tmp_path / "images")}})
    with pytest.raises(FileNotFoundError, match=r"accuracy\.image_root: no such directory: .*nowhere"):
        run_accuracy(validate({"output_dir": str(tmp_path / "acc2"), "accuracy": {**acc, "image_root": str(tmp_path / "nowhere")}}))
    assert not (tmp_path / "acc2").exists()


def test_accuracy_keeps_scores_recorded_with_the_input_path_alone(tmp_path):
    """A record from before accuracy.files counted an HPD v2 JSON's images holds the JSON's own
    fingerprint: while it matches, the stored scores stay and the new value is recorded; another
    value voids them."""
    import json

    from raypref.formats import input_fingerprint, write_pairs
    from raypref.pref_accuracy import STAGED_FILE, staged_pairs
    from raypref.resume import fingerprint
    from tests.test_formats import SOURCE

    write_pairs(SOURCE, tmp_path / "h", "hpdv2", split="test")
    js = tmp_path / "h" / "test.json"
    cfg = validate({"output_dir": str(tmp_path / "acc"), "accuracy": {
        "pairs": str(js), "format": "hpdv2", "scorers": [{"name": "jpeg", "cls": "jpeg_compressibility"}]}})
    out = cfg.stage_dir("accuracy")
    out.mkdir(parents=True)
    staged_pairs(cfg, out, images=False)
    record, scores = out / STAGED_FILE, out / "scorers" / "jpeg" / "scores"
    new = input_fingerprint(js, "hpdv2")
    assert json.loads(record.read_text())["accuracy.files"] == new != fingerprint(str(js))

    def rerun(files: str) -> bool:
        scores.mkdir(parents=True, exist_ok=True)
        (scores / "part-0.parquet").write_bytes(b"kept")
        record.write_text(json.dumps({**json.loads(record.read_text()), "accuracy.files": files}))
        staged_pairs(cfg, out, images=False)
        return (scores / "part-0.parquet").is_file()

    assert rerun(fingerprint(str(js)))  # as the run before the upgrade recorded it
    assert json.loads(record.read_text())["accuracy.files"] == new
    assert not rerun("0123456789abcdef")  # another input


def test_the_scoring_line_counts_the_pairs_this_run_scores():
    from raypref.pref_accuracy import scoring_line

    assert scoring_line("clip", 4, 2) == "[accuracy] clip: scoring 2 of 4 pairs (2 stored)"  # a larger limit than before
    assert scoring_line("clip", 4, 0) == "[accuracy] clip: scoring 4 pairs"


def test_a_scores_file_a_crash_cut_short_is_set_aside_before_the_stored_rows_are_read(tmp_path, capsys):
    """stored_count reads a scorer's stored scores before checkpointed() runs: a torn file there was a raw
    Arrow error that stopped every rerun; it goes to scores.torn/ and its pairs count as not scored."""
    import pyarrow as pa

    from raypref.config import ScorerConf
    from raypref.pref_accuracy import stored_count

    s = ScorerConf(name="jpeg", cls="jpeg_compressibility")
    scores = tmp_path / "scorers" / "jpeg" / "scores"
    scores.mkdir(parents=True)
    pq.write_table(pa.table({S.IMPORT_ROW: [0, 1]}), scores / "a.parquet")
    keys = pa.table({S.IMPORT_ROW: [0, 1]})
    assert stored_count(s, tmp_path, keys) == 2  # every staged pair: done
    (scores / "b.parquet").write_bytes(b"PAR1 cut short")
    assert stored_count(s, tmp_path, pa.table({S.IMPORT_ROW: [0, 1, 2]})) == 2  # not done, and no ArrowInvalid
    assert (tmp_path / "scorers" / "jpeg" / "scores.torn" / "b.parquet").is_file()
    assert "1 file(s) in" in capsys.readouterr().out and stored_count(s, tmp_path, keys) == 2


def test_a_block_whose_checkpoint_is_still_pending_counts_as_not_stored(tmp_path):
    """Ray Data 2.60 records a block's ids as pending before it writes the block's file and commits them
    once the file is whole; a kill in between leaves a whole file that the rerun deletes and scores again,
    so its pairs are not among the "(N stored)" nor make a scorer's scores whole."""
    import pyarrow as pa
    from ray.data.checkpoint import CheckpointConfig
    from ray.data.checkpoint.checkpoint_writer import PENDING_CHECKPOINT_SUFFIX, BatchBasedCheckpointWriter

    from raypref.config import ScorerConf
    from raypref.pref_accuracy import stored_as_is, stored_count
    from raypref.resume import PENDING

    assert PENDING == PENDING_CHECKPOINT_SUFFIX + ".parquet"  # the name Ray gives a pending checkpoint
    s = ScorerConf(name="jpeg", cls="jpeg_compressibility")
    d = tmp_path / "scorers" / "jpeg"
    (d / "scores").mkdir(parents=True)
    writer = BatchBasedCheckpointWriter(CheckpointConfig(id_column=S.IMPORT_ROW, checkpoint_path=str(d / "_checkpoint")))

    def write_block(task: int, rows: list[int]):
        """As Ray's write task does: the pending checkpoint, then the file (<write uuid>_<task>-0.parquet)."""
        block = f"0355aNTq_a958b292_{task:06}"
        pending = writer.write_pending_checkpoint(pa.array(rows), block)
        pq.write_table(pa.table({S.IMPORT_ROW: rows}), d / "scores" / f"{block}-0.parquet")
        return pending

    keys = pa.table({S.IMPORT_ROW: [0, 1, 2, 3]})
    writer.commit_checkpoint(write_block(0, [0, 1]))
    second = write_block(1, [2, 3])  # killed before the commit: its file whole, its checkpoint pending
    assert stored_as_is(s, tmp_path, keys) == 2 and stored_count(s, tmp_path, keys) == 2
    assert len(list((d / "scores").glob("*.parquet"))) == 2  # the file left for Ray's rerun to delete
    writer.commit_checkpoint(second)
    assert stored_as_is(s, tmp_path, keys) == 4 and stored_count(s, tmp_path, keys) == 4


def test_a_pairs_folder_is_walked_once_for_both_of_its_fingerprints(tmp_path, monkeypatch):
    """_input_settings gives the files' fingerprint (less the run's output_dir inside the folder) and the
    folder's own (what an older record holds) from one walk of the folder, the values of two walks."""
    import pathlib

    import pyarrow as pa

    from raypref.pref_accuracy import _input_settings
    from raypref.resume import fingerprint

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"x": [i]}), pairs / f"part-{i}.parquet")
    cfg = validate({"output_dir": str(pairs / "run"), "accuracy": {
        "pairs": str(pairs), "format": "raypref", "scorers": [{"name": "jpeg", "cls": "jpeg_compressibility"}]}})
    out = cfg.stage_dir("accuracy")
    out.mkdir(parents=True)
    (out / "pairs_keys.parquet").write_bytes(b"the run's own output, not the input")
    walks = []
    rglob = pathlib.Path.rglob
    monkeypatch.setattr(pathlib.Path, "rglob", lambda self, *a, **k: walks.append(self) or rglob(self, *a, **k))

    mine, added = _input_settings(cfg, out)
    assert walks == [pairs]
    monkeypatch.undo()
    files, then = fingerprint(str(pairs), pairs / "run"), fingerprint(str(pairs))
    assert files != then  # the output_dir left out of one only
    assert mine == {"accuracy": {"pairs": str(pairs.resolve()), "format": "raypref", "files": files}}
    assert added == {"accuracy.files": then}
