"""Config loading and overrides, run metadata, prompts reading, model references: clear errors."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from raypref import schema as S
from raypref.config import ConfigError, describe, load_config, write_run_meta
from raypref.models import ModelNotFound, resolve_model
from raypref.prompts import PromptsError, read_prompts
from tests.conftest import REPO


def test_default_config_and_overrides():
    cfg = load_config(None, ["train.max_steps=7", "build.generators.0.num_samples=3", "ray.address=null", "build.scorers.1.weight=0.25"])
    assert cfg.train.max_steps == 7
    assert cfg.build.generators[0].num_samples == 3
    assert cfg.ray.address is None
    assert cfg.build.scorers[1].weight == 0.25
    assert cfg.ray.dashboard_host == "127.0.0.1"


@pytest.mark.parametrize("path", sorted((REPO / "raypref" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    # a config the README tells users to run must stay valid as keys are added, renamed or removed
    cfg = load_config(path)
    assert cfg.output_dir.startswith("runs/")


def test_yaml_on_is_a_key_not_a_boolean(tmp_path):
    # YAML 1.1 reads a bare `on` as True; the config loader keeps YAML 1.2 booleans only
    p = tmp_path / "c.yaml"
    p.write_text("build:\n  pairs: {strategy: all_pairs, on: score_vqa_colour, keep_ties: true}\n")
    cfg = load_config(p, ["build.pairs.tie_tolerance=0.5"])
    assert cfg.build.pairs.on == "score_vqa_colour" and cfg.build.pairs.keep_ties is True
    with pytest.raises(ConfigError, match=r"pairs.on: 'off' is no scorer's column"):  # the string, not False
        load_config(None, ["build.pairs.on=off"])


def test_pretrain_split_takes_a_union():
    from raypref.shapes.data import prompts_by_template

    assert load_config(None, ["pretrain.clip.split=train+align"]).pretrain.clip.split == "train+align"
    with pytest.raises(ConfigError, match=r"pretrain\.clip\.split"):
        load_config(None, ["pretrain.clip.split=train+bogus"])
    union = prompts_by_template("train+align")
    train, align = prompts_by_template("train"), prompts_by_template("align")
    assert sum(map(len, union.values())) == sum(map(len, train.values())) + sum(map(len, align.values()))
    assert set(union["relation"]) == set(train["relation"]) | set(align["relation"])


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.max_stepz: unknown key"):
        load_config(None, ["train.max_stepz=3"])
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"build": {"generators": [{"modle": "x"}]}}))
    with pytest.raises(ConfigError, match=r"build\.generators\.0\.modle: unknown key"):
        load_config(p)


def test_an_override_of_a_list_entry_the_file_lacks_names_the_key_and_the_list(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run")}))  # no build.generators: the default's
    for key in ("build.generators.0.model", "accuracy.scorers.0"):
        lst = key.rsplit(".", 2)[0] if key.endswith("model") else key.rsplit(".", 1)[0]
        with pytest.raises(ConfigError) as e:
            load_config(p, [f"{key}=x"])
        assert str(e.value) == (f"override {key}: {lst} has no list in the config file (an override changes an entry "
                                f"the file holds, not a default's), so there is no entry 0 to change; add the entry to "
                                f"the file, or set the whole list ({lst}=[...])")
    p.write_text(yaml.safe_dump({"build": {"generators": [{"name": "a"}]}}))
    with pytest.raises(ConfigError, match=r"^override build\.generators\.1\.model: build\.generators has 1 entry in the "
                                          r"config file \(index 0\), so there is no entry 1 to change"):
        load_config(p, ["build.generators.1.model=x"])
    with pytest.raises(ConfigError, match=r"^override build\.generators\.first\.model: build\.generators takes a list "
                                          r"and 'first' is not an index"):
        load_config(p, ["build.generators.first.model=x"])
    # a free args dict still takes a new key, a digit too; a list the file has takes its entries' overrides
    c = load_config(p, ["build.generators.0.model=x", "build.generators.0.args.steps.0=3"])
    assert c.build.generators[0].model == "x" and c.build.generators[0].args == {"steps": {"0": 3}}


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.num_workers"):
        load_config(None, ["train.num_workers=0"])
    with pytest.raises(ConfigError, match=r"build\.scorers has 2 entries in the config file \(indices 0-1\), so there is no entry 9"):
        load_config(None, ["build.scorers.9.weight=1"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.max_steps"])
    with pytest.raises(ConfigError, match=r"build: .*scorer names must be unique .*\['vqa', 'vqa'"):
        load_config(None, ["build.scorers.1.name=vqa"])
    with pytest.raises(ConfigError, match=r"build: .*pairs.on: 'score_vqq' is no scorer's column"):
        load_config(None, ["build.pairs.on=score_vqq"])
    assert load_config(None, ["build.pairs.on=score_vqa_colour"]).build.pairs.on == "score_vqa_colour"
    # rescale100 without a usable range fails at load, not after the images are made and scored
    with pytest.raises(ConfigError, match=r"build\.scorers\.0: .*scorer 'vqa': normalize rescale100 needs value_range"):
        load_config(None, ["build.scorers.0.normalize=rescale100", "build.scorers.0.value_range=null"])
    with pytest.raises(ConfigError, match=r"build\.scorers\.0: .*value_range must have hi > lo, got \[1\.0, 1\.0\]"):
        load_config(None, ["build.scorers.0.normalize=rescale100", "build.scorers.0.value_range=[1, 1]"])
    assert load_config(None, ["build.scorers.0.normalize=rescale100", "build.scorers.0.value_range=[0, 1]"]) \
        .build.scorers[0].value_range == (0.0, 1.0)


def test_output_uris_are_refused_by_key():
    # a URI would otherwise become a local directory named 's3:' on every node
    with pytest.raises(ConfigError, match=r"  output_dir: .*a URI \(s3://\.\.\.\); outputs go to a filesystem path"):
        load_config(None, ["output_dir=s3://bucket/run"])
    for key in ("reward.export_dir", "pcclip.export_dir", "pretrain.clip.export_dir", "pretrain.t2i.export_dir"):
        with pytest.raises(ConfigError, match=rf"  {key}: .*a URI \(gs://\.\.\.\)"):
            load_config(None, [f"{key}=gs://bucket/model"])
    assert load_config(None, ["output_dir=/mnt/raypref/run", "reward.export_dir=rm"]).output_dir == "/mnt/raypref/run"


def test_run_meta_written(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    d = write_run_meta(cfg, tmp_path / "build", "build")
    again = yaml.safe_load((d / "config.yaml").read_text())
    assert again["output_dir"] == str(tmp_path)
    meta = json.loads((d / "run_meta.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert meta["git_sha"].startswith(head or "unknown")


def test_describe_documents_every_field():
    lines = describe()
    assert any(l.startswith("train.beta ") and "Diffusion-DPO" in l for l in lines)
    assert all("  " in l for l in lines)


def test_prompts_formats(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\na dog\na cat\n\n")
    t = read_prompts(tmp_path / "p.txt")
    assert t.column(S.PROMPT).to_pylist() == ["a cat", "a dog"]
    assert t.schema.metadata[b"duplicates_dropped"] == b"1"
    assert t.column(S.PROMPT_ID)[0].as_py() == S.prompt_id("a cat")
    (tmp_path / "p.jsonl").write_text('{"prompt": "x", "class_label": 3}\n{"prompt": "y"}\n')
    t = read_prompts(tmp_path / "p.jsonl")
    assert t.column(S.CLASS_LABEL).to_pylist() == ["3", None]
    pq.write_table(t, tmp_path / "p.parquet")
    assert read_prompts(tmp_path / "p.parquet", limit=1).num_rows == 1


def test_prompt_errors_name_the_row(tmp_path):
    with pytest.raises(PromptsError, match="prompts file not found"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(PromptsError, match="prompts file not set"):  # not "not found: ."
        read_prompts("")
    (tmp_path / "e.txt").write_text("ok\n   \nfine\n")
    with pytest.raises(PromptsError, match=r"e\.txt:2: empty prompt"):
        read_prompts(tmp_path / "e.txt")
    (tmp_path / "e.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(PromptsError, match=r"e\.jsonl:2: expected an object with a 'prompt' key"):
        read_prompts(tmp_path / "e.jsonl")


def test_model_refs(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFound, match="model path does not exist: /no/such/model"):
        resolve_model("/no/such/model", what="generator 'sd' model")
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model("local-dir:" + str(tmp_path / "nope"))
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model("local-dir:m") == "local-dir:" + str((tmp_path / "m").resolve())
    assert resolve_model("m") == str((tmp_path / "m").resolve())
    with pytest.raises(ModelNotFound, match="unknown tiny model"):
        resolve_model("tiny:gpt")
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    with pytest.raises(ModelNotFound, match="unknown shapes model 'gpt'"):
        resolve_model("shapes:gpt")


def test_hub_names_offline_need_the_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    sd = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_model(sd) == sd  # online: the loader downloads it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match=r"generator 'sd' model: 'stable-diffusion-v1-5/stable-diffusion-v1-5' is "
                                            r"not a local path, and HF_HUB_OFFLINE is set while .* not in the Hugging Face cache"):
        resolve_model(sd, what="generator 'sd' model")
    with pytest.raises(ModelNotFound, match="hub repo laion/CLIP-ViT-B-32 is not in"):
        resolve_model("hf-hub:laion/CLIP-ViT-B-32", what="reward.backbone")
    assert resolve_model("ViT-B-32") == "ViT-B-32"  # a bare name may be the loader's own: left to it
    (tmp_path / "hub" / "models--stable-diffusion-v1-5--stable-diffusion-v1-5" / "snapshots" / "abc").mkdir(parents=True)
    assert resolve_model(sd) == sd  # cached: the loader finds it offline


def test_open_clip_tags_offline_need_the_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from raypref.build import scorer_kwargs
    from raypref.config import ScorerConf
    from raypref.models import _open_clip_cached, resolve_pretrained

    # huggingface_hub reads HF_HUB_CACHE (else HF_HOME, XDG_CACHE_HOME) into constants once, at import, and
    # looks files up under constants.HF_HUB_CACHE; open_clip's URL cache is expanduser('~/.cache/clip'): HOME
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = ScorerConf(name="clip", cls="clip_score", model="ViT-B-32", pretrained="openai")
    with pytest.raises(ModelNotFound, match=r"^scorer 'clip' pretrained: HF_HUB_OFFLINE is set while the weights of "
                                            r"open_clip ViT-B-32 pretrained='openai' are not in the local cache; download "
                                            r"the hub repo \(`hf download timm/vit_base_patch32_clip_224.openai`\) into "
                                            r".*/hub .*or give a local weights file as pretrained"):
        scorer_kwargs(clip)  # build, eval, relabel and accuracy call it before Ray starts
    # cached as open_clip's hub download leaves it: the .safetensors twin, in the snapshot refs/main names
    repo = tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "open_clip_model.safetensors").write_bytes(b"w")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    assert scorer_kwargs(clip)["pretrained"] == "openai"
    with pytest.raises(ModelNotFound, match=r"reward.backbone_pretrained: .* ViT-L-14 pretrained='openai' are not in"):
        resolve_pretrained("ViT-L-14", "openai", "reward.backbone_pretrained")
    # a weights file is never looked up, and reaches the actors as an absolute path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"w")
    assert resolve_pretrained("ViT-L-14", "w.pt", "pcclip.pretrained") == str((tmp_path / "w.pt").resolve())
    with pytest.raises(ModelNotFound, match=r"pcclip.pretrained: 'nope' is neither a pretrained tag of open_clip's "
                                            r"ViT-L-14 \(tags: \['openai'.*\]\) nor a weights file"):
        resolve_pretrained("ViT-L-14", "nope", "pcclip.pretrained")
    assert resolve_pretrained("hf-hub:laion/x", "openai", "w") == "openai"  # open_clip ignores it there
    # HPSv2 reads no tag (its weights are its checkpoint): not the offline check's to look up, but its own
    # check_pretrained's to refuse; a checkpoint file given as pretrained is made absolute
    hps = ScorerConf(name="hps", cls="hpsv2", model="ViT-H-14", pretrained="laion2b_s32b_b79k",
                     args={"checkpoint": str(tmp_path / "w.pt")})
    with pytest.raises(ValueError, match=r"^scorer 'hps': both pretrained='laion2b_s32b_b79k' and args.checkpoint"):
        scorer_kwargs(hps)  # HPSv2's own refusal, not the cache's: it would never load that tag
    hps = hps.model_copy(update={"pretrained": "w.pt", "args": {}})
    assert scorer_kwargs(hps)["pretrained"] == str((tmp_path / "w.pt").resolve())
    # a tag with a URL only: the file open_clip's download keeps under ~/.cache/clip
    url = {"url": "https://example.invalid/clip/abc/RN50.pt"}
    assert not _open_clip_cached(url)
    (tmp_path / ".cache" / "clip").mkdir(parents=True)
    (tmp_path / ".cache" / "clip" / "RN50.pt").write_bytes(b"w")
    assert _open_clip_cached(url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert resolve_pretrained("ViT-L-14", "openai", "w") == "openai"  # online: open_clip downloads it


def test_shapes_prompt_source_is_balanced_and_checked():
    from raypref.shapes.world import prompts, template_of, parse_prompt

    t = read_prompts("shapes:eval", limit=8)
    texts = t.column(S.PROMPT).to_pylist()
    # round-robin over the four templates: a limit takes every template alike
    assert [template_of(parse_prompt(x)) for x in texts] == ["single", "count", "position", "relation"] * 2
    assert set(texts) <= set(prompts("eval"))
    assert set(t.column(S.SOURCE).to_pylist()) == {"shapes:eval"}
    assert read_prompts("shapes:align").num_rows == len(prompts("align"))
    union = read_prompts("shapes:train+align").column(S.PROMPT).to_pylist()
    assert sorted(union) == sorted(prompts("train") + prompts("align"))
    assert read_prompts("shapes:heldout+eval").num_rows == len(prompts("heldout"))  # overlap listed once
    with pytest.raises(PromptsError, match="unknown shapes split 'test'"):
        read_prompts("shapes:test")
    with pytest.raises(PromptsError, match="unknown shapes split 'tset'"):
        read_prompts("shapes:train+tset")


def test_a_shapes_split_typo_is_a_config_error_naming_its_key():
    from raypref.config import SHAPES_SPLITS
    from raypref.shapes.world import SPLITS

    assert SHAPES_SPLITS == SPLITS  # config spells them so as not to import the shapes world
    for key in ("build.prompts", "eval.prompts", "train.refl.prompts"):
        with pytest.raises(ConfigError, match=rf"\n  {key}: Value error, 'shapes:train\+trian': unknown shapes split 'trian' "
                                              r"\(known: train, heldout, align, eval;"):
            load_config(None, [f"{key}=shapes:train+trian"])
        section, *rest = key.split(".")
        node = getattr(load_config(None, [f"{key}=shapes:heldout+align"]), section)
        for part in rest:
            node = getattr(node, part)
        assert node == "shapes:heldout+align"  # a union of known splits loads
    assert load_config(None, ["build.prompts=shapes.txt"]).build.prompts == "shapes.txt"  # a file: read when the build runs


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "raypref.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_help_on_every_subcommand():
    for args in (["--help"], ["build", "--help"], ["train", "--help"], ["train", "dpo", "--help"], ["eval", "--help"], ["demo", "--help"], ["config", "--help"],
                 ["pretrain", "--help"], ["pretrain", "t2i", "--help"], ["pretrain", "clip", "--help"], ["pair", "--help"]):
        r = _cli(*args)
        assert r.returncode == 0, (args, r.stderr)
        assert "usage: raypref" in r.stdout


def test_every_subcommand_runs_a_function_that_exists(monkeypatch):
    """Each subcommand names its function as 'module:function'; a typo would surface only when run."""
    import argparse
    import importlib

    from raypref import cli

    def leaves(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from leaves(sub, path + (name,)) if "run" not in sub._defaults else [(path + (name,), sub)]

    found = dict(leaves(cli.make_parser()))
    assert {" ".join(k) for k in found} >= {"build", "pair", "rank", "relabel", "train dpo", "train sft", "train refl",
                                            "train reward", "train pcclip", "pretrain t2i", "pretrain clip", "accuracy",
                                            "eval", "report", "sweep", "demo", "config"}
    for words, sub in found.items():
        module, function = sub._defaults["run"].split(":")
        assert callable(getattr(importlib.import_module(module), function)), words
    calls = []
    monkeypatch.setattr("raypref.stages.pretrain", lambda cfg, what: calls.append(what))
    assert cli.main(["pretrain", "clip"]) == 0 and calls == ["clip"]  # the subcommand's own argument reaches it


def test_cli_errors_are_clear(tmp_path):
    r = _cli("config", "train.bogus=1")
    assert r.returncode == 2 and "train.bogus: unknown key" in r.stderr
    r = _cli("build", f"output_dir={tmp_path}", f"build.prompts={tmp_path}/none.txt")
    assert r.returncode == 2 and "build.prompts: prompts file not found" in r.stderr  # the key that named it
    assert "[ray]" not in r.stdout and not (tmp_path / "build").exists()  # found before Ray starts, and any write
    r = _cli("build", f"output_dir={tmp_path}", "build.prompts=")
    assert r.returncode == 2 and "build.prompts: not set" in r.stderr and "[ray]" not in r.stdout
    r = _cli("build", f"output_dir={tmp_path}", "build.generators.0.model=/no/such/sd")
    assert r.returncode == 2 and "model path does not exist: /no/such/sd" in r.stderr
    assert "[ray]" not in r.stdout
    pasted = "sk-live-" + "x9" * 20  # `raypref config` does not echo a key pasted into a judge's args
    r = _cli("config", "build.scorers.0.cls=llm_judge", "build.scorers.0.args.backend=http",
             "build.scorers.0.args.http.base_url=http://127.0.0.1:9/v1", "build.scorers.0.args.http.model=m",
             f"build.scorers.0.args.http.api_key_env={pasted}")
    assert r.returncode == 2 and "args.http.api_key_env" in r.stderr and pasted not in r.stdout + r.stderr


def test_config_errors_name_the_override_and_the_likely_key(tmp_path):
    from raypref.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.betta=2500", "build.scorers.0.wieght=1", "rank.top_p=7"])
    lines = str(e.value).splitlines()[1:]
    assert "  train.betta: unknown key (did you mean train.beta?) [from a command-line override]" in lines
    assert "  build.scorers.0.wieght: unknown key (did you mean build.scorers.0.weight?) [from a command-line override]" in lines
    # a number out of range is shown, as actor args show theirs; one of the wrong kind is not: it may be a key
    assert "  rank.top_p: Input should be less than or equal to 1, got 7 [from a command-line override]" in lines
    with pytest.raises(ConfigError) as e:
        load_config(None, ["pcclip.llm.api_key_env=123456789012"])
    assert "pcclip.llm.api_key_env: Input should be a valid string [from" in str(e.value)
    assert "123456789012" not in str(e.value)
    from actors.llm_judge import parse_args

    with pytest.raises(ValueError) as e:
        parse_args("j", {"backend": "http", "http": {"base_url": "http://x/v1", "model": "m", "api_key_env": 98765432109876}})
    assert "args.http.api_key_env: Input should be a valid string" in str(e.value) and "98765432109876" not in str(e.value)
    (tmp_path / "c.yaml").write_text("train:\n  max_steps: 5\nbuild:\n  limit: 3\ntrain:\n  beta: 100\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML: duplicate key 'train' \(first on line 1\)"):
        load_config(tmp_path / "c.yaml")  # PyYAML alone keeps the second section and drops max_steps
    # an override's value that is not YAML is an error naming the key, not the value; ' #' is no comment there
    with pytest.raises(ConfigError, match=r"^override train.beta: its value is not valid YAML \(column 4: .*\); quote it"):
        load_config(None, ["train.beta=[1,"])
    assert load_config(None, ["output_dir=/tmp/a #b"]).output_dir == "/tmp/a #b"
    # a merge key is no repeated key: a pool block shared through an anchor still loads
    (tmp_path / "c.yaml").write_text("build:\n  scorers:\n    - {name: a, cls: shapes_vqa, pool: &p {batch_size: 3, num_cpus: 0.5}}\n"
                                     "    - {name: b, cls: shapes_detector, pool: {<<: *p, num_cpus: 0.25}}\n")
    pools = [s.pool for s in load_config(tmp_path / "c.yaml").build.scorers]
    assert [(p.batch_size, p.num_cpus) for p in pools] == [(3, 0.5), (3, 0.25)]
    (tmp_path / "c.yaml").write_text("train:\n  max_stepz: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "c.yaml")
    assert str(e.value).splitlines()[1] == "  train.max_stepz: unknown key (did you mean train.max_steps?)"  # in the file


def test_jobs_end_a_config_error_with_its_message_alone():
    # what a `ray job submit` log shows: the message naming the key, exit 2, no traceback
    r = subprocess.run([sys.executable, "-m", "jobs.rank_pairs", "rank.top_pp=0.1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("python -m jobs.rank_pairs: error: ") and "rank.top_pp: unknown key (did you mean rank.top_p?)" in r.stderr
    r = subprocess.run([sys.executable, "-m", "jobs.build", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m jobs.build ")
    # run as a file, a submitted job still knows its stage: its relative export_dir is refused before anything runs
    import os

    env = dict(os.environ, RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0.zip"}}),
               PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "jobs/train_reward.py", "output_dir=/mnt/x", "reward.export_dir=models/rm"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert r.returncode == 2 and "reward.export_dir: 'models/rm' is relative" in r.stderr, r.stderr


def test_a_key_added_since_a_record_holds_while_it_keeps_its_default(tmp_path):
    from raypref.config import record_settings, settings_changed

    old = tmp_path / "run.json"
    record_settings(old, {"pcclip": {"loss": "contrastive"}, "relabel": {"format": "pickapic"}})  # before the keys
    same = {"pcclip": {"loss": "contrastive", "train_towers": "both"}, "relabel": {"format": "pickapic", "orient": "ai"}}
    assert settings_changed(old, same) is None
    changed = {"pcclip": {"loss": "contrastive", "train_towers": "text"}, "relabel": {"format": "pickapic", "orient": "ai"}}
    assert settings_changed(old, changed) == "pcclip.train_towers: (not set) -> 'text'"
    # a key the config does not define, or a recorded value that changed, is a change as before
    assert settings_changed(old, {**same, "extra": 1}) == "extra: (not set) -> '1'"
    assert settings_changed(old, {**same, "pcclip": {"loss": "hinge", "train_towers": "both"}}) == \
        "pcclip.loss: 'contrastive' -> 'hinge'"


def test_resume_guard_leaves_out_what_the_run_does_not_read(tmp_path):
    from raypref.train_checkpoint import guard_resume

    ckpt = tmp_path / "ray" / "reward" / "checkpoint_000001"
    ckpt.mkdir(parents=True)
    swap = {"left": "right", "right": "left"}
    guard_resume(tmp_path, "reward", "reward", {"hflip": 0.0, "hflip_swap": swap, "lr": 1.0, "max_steps": 5})
    # what a run does not read (its swap words at hflip 0, its budget) is not recorded either
    assert json.loads((tmp_path / "ray" / "reward" / "raypref_run.json").read_text()) == {"reward.hflip": 0.0, "reward.lr": 1.0}
    # the swap words of a run that mirrors nothing are not read: changing them still resumes
    guard_resume(tmp_path, "reward", "reward", {"hflip": 0.0, "hflip_swap": {"top": "bottom"}, "lr": 1.0, "max_steps": 9})
    with pytest.raises(ValueError, match=r"reward: .* other settings \(reward\.lr: '1\.0' -> '2\.0'\)"):
        guard_resume(tmp_path, "reward", "reward", {"hflip": 0.0, "hflip_swap": swap, "lr": 2.0})
    with pytest.raises(ValueError, match=r"reward\.hflip: '0\.0' -> '0\.5'"):
        guard_resume(tmp_path, "reward", "reward", {"hflip": 0.5, "hflip_swap": swap, "lr": 1.0})
    # a record made before a key was skipped still holds it; the comparison leaves it out on both sides
    old = {"reward": {"hflip": 0.5, "hflip_swap.left": "right", "lr": 1.0, "method": "x"}}
    (tmp_path / "ray" / "reward" / "raypref_run.json").write_text(json.dumps(
        {f"{s}.{k}": v for s, d in old.items() for k, v in d.items()}))
    guard_resume(tmp_path, "reward", "reward", {"hflip": 0.5, "hflip_swap": {"left": "right"}, "lr": 1.0, "method": "y"},
                 ignore=("method",))
    with pytest.raises(ValueError, match=r"reward\.hflip_swap\.left: 'right' -> 'east'"):
        guard_resume(tmp_path, "reward", "reward", {"hflip": 0.5, "hflip_swap": {"left": "east"}, "lr": 1.0})
    # a record from before hflip_swap was skipped at hflip 0 (and before max_steps could change) holds both
    (tmp_path / "ray" / "reward" / "raypref_run.json").write_text(json.dumps(
        {"reward.hflip": 0.0, "reward.hflip_swap.left": "right", "reward.lr": 1.0, "reward.max_steps": 5}))
    guard_resume(tmp_path, "reward", "reward", {"hflip": 0.0, "hflip_swap": {"top": "bottom"}, "lr": 1.0, "max_steps": 9})


def test_resume_guard_compares_data_dirs_as_the_dirs_they_name(tmp_path, monkeypatch):
    from raypref.train_checkpoint import guard_resume
    from raypref.train_dpo import guard_train_resume

    monkeypatch.chdir(tmp_path)

    def train(out, *overrides, method="dpo"):
        (tmp_path / out / "train" / "ray" / method / "checkpoint_000001").mkdir(parents=True, exist_ok=True)
        guard_train_resume(load_config(None, [f"output_dir={out}", *overrides]), method, "base")

    train("runs/a")
    # the default (build/pairs) spelled out, absolute or relative, with a trailing slash: the same data
    for spelled in (tmp_path / "runs/a/build/pairs", f"{tmp_path}/runs/a/build/pairs/", "runs/a/build/pairs",
                    "./runs/a/build/../build/pairs"):
        train("runs/a", f"train.pairs={spelled}")
    with pytest.raises(ValueError, match=r"dpo: .* other settings \(train\.pairs: 'None' -> 'runs/b/build/pairs'\)"):
        train("runs/a", "train.pairs=runs/b/build/pairs")  # another run's pairs are other data
    # and the reverse: a run that spelled the default out resumes without it, or with another spelling
    train("runs/b", "train.pairs=runs/b/build/pairs")
    train("runs/b")
    train("runs/b", f"train.pairs={tmp_path}/runs/b/build/pairs/")
    record = tmp_path / "runs/b/train/ray/dpo/raypref_run.json"
    assert json.loads(record.read_text())["train.pairs"] == "runs/b/build/pairs"  # kept as first spelled
    # refl's pretraining images, a key inside train.refl, the same way
    train("runs/c", method="refl")
    train("runs/c", "train.refl.pretrain_samples=runs/c/build/samples/", method="refl")
    with pytest.raises(ValueError, match=r"train\.refl\.pretrain_samples: 'None' -> 'elsewhere'"):
        train("runs/c", "train.refl.pretrain_samples=elsewhere", method="refl")
    # reward.pairs may be a list: the same dirs in the same order are the same data; a URI is compared as spelled
    stage = tmp_path / "runs/d/reward"
    (stage / "ray" / "reward" / "checkpoint_000001").mkdir(parents=True)
    guard_resume(stage, "reward", "reward", {"pairs": None})
    guard_resume(stage, "reward", "reward", {"pairs": [f"{tmp_path}/runs/d/build/pairs/"]})
    with pytest.raises(ValueError, match=r"reward\.pairs: 'None' -> "):
        guard_resume(stage, "reward", "reward", {"pairs": ["runs/d/build/pairs", "more"]})
    guard_resume(tmp_path / "runs/e/reward", "reward", "reward", {"pairs": "s3://bucket/pairs"})
    (tmp_path / "runs/e/reward/ray/reward/checkpoint_000001").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"reward\.pairs: 's3://bucket/pairs' -> 's3://bucket/pairs/'"):
        guard_resume(tmp_path / "runs/e/reward", "reward", "reward", {"pairs": "s3://bucket/pairs/"})
