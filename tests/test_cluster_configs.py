"""cluster/: the launcher configs pass the checks `ray up` runs on them, keep the dashboard on
loopback, share the launching machine's auth token with every node, and install the same pins as
the Makefile; the job runtime_env is one Ray accepts; the Kubernetes image and KubeRay manifests
match the lock file's Ray and pins, keep the dashboard on loopback, use token auth, take secrets
by reference only, and run a job whose config loads."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ["cluster/local.yaml", "cluster/aws.yaml"]


def _load(name):
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_ray_up_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load(name)))  # what `ray up` does before it starts anything
    bad = _load(name)
    bad["head_start_ray_comands"] = bad.pop("head_start_ray_commands")  # a typo must not pass
    with pytest.raises(Exception, match="head_start_ray_comands"):
        validate_config(prepare_config(bad))


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_dashboard_on_loopback_and_pinned_install(name):
    c = _load(name)
    starts = c["head_start_ray_commands"] + c["worker_start_ray_commands"]
    head = [s for s in c["head_start_ray_commands"] if "ray start" in s]
    assert head and all("--dashboard-host=127.0.0.1" in s for s in head)
    assert all("RAY_USAGE_STATS_ENABLED=0" in s for s in starts if "ray start" in s)
    make_pins = set(re.findall(r"torch(?:vision)?==[\d.]+", (ROOT / "Makefile").read_text()))
    setup = " ".join(c["setup_commands"])
    assert make_pins and make_pins <= set(re.findall(r"torch(?:vision)?==[\d.]+", setup))
    assert "-r requirements.lock" in setup
    assert c["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # one token on every node (Ray >= 2.60)
    # a worker's `ray start` turns token mode on only when told to (a head's does when it finds a token)
    assert all(s.startswith("RAY_AUTH_MODE=token ") for s in starts if "ray start" in s)
    # the setup commands install the checkout that file_mounts copies, without local state
    assert "cd ~/raypref" in setup and c["file_mounts"]["~/raypref"] == "."
    assert {".venv", "runs", ".git"} <= set(c["rsync_exclude"])


def test_local_launcher_starts_every_worker_listed():
    from ray.autoscaler._private.util import prepare_config

    c = _load("cluster/local.yaml")
    c["provider"]["worker_ips"] = ["10.0.0.2", "10.0.0.3"]
    types = prepare_config(c)["available_node_types"]
    assert [(t["min_workers"], t["max_workers"]) for t in types.values()] == [(2, 2)]


def test_aws_launcher_runs_in_an_image_of_the_locked_ray_and_a_python_that_will_do():
    image = _load("cluster/aws.yaml")["docker"]["image"]
    m = re.fullmatch(r"rayproject/ray:([\d.]+)-py(\d)(\d+)-gpu", image)
    assert m and m.group(1) == _lock_pin("ray")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(f"{m.group(2)}.{m.group(3)}")


def test_aws_nodes_share_the_run_directory_the_jobs_write_to():
    c = _load("cluster/aws.yaml")
    init = " ".join(c["initialization_commands"])  # on each host, before Docker starts the container
    assert re.search(r"mount -t nfs4 .* fs-\w+\.efs\.[\w-]+\.amazonaws\.com:/ /mnt/raypref;", init)
    assert "-v /mnt/raypref:/mnt/raypref" in c["docker"]["run_options"]
    # the README's jobs and the KubeRay volume use the same path
    readme = (ROOT / "README.md").read_text()
    dirs = re.findall(r"output_dir=(\S+)", readme.split("## On a cluster")[1].split("**Kubernetes")[0])
    assert dirs and all(d.startswith("/mnt/raypref/") for d in dirs)
    runs = {m for p in (ROOT / "cluster/kuberay").glob("*.yaml")
            for m in re.findall(r"\{name: runs, mountPath: (\S+)\}", p.read_text())}
    assert runs == {"/mnt/raypref"}


def test_job_runtime_env_is_valid_and_leaves_local_state_behind():
    from ray.runtime_env import RuntimeEnv

    env = RuntimeEnv(**_load("cluster/runtime_env.yaml"))
    assert env["working_dir"] == "."
    assert {".venv/", "runs/", ".git/"} <= set(env["excludes"])
    assert env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"


# -- Kubernetes: cluster/Dockerfile and the KubeRay manifests --------------------------------------
# No Kubernetes API server or Docker daemon here: these check what can go wrong on our side (versions,
# pins, the entrypoint, loopback, auth, secrets), not what the KubeRay operator accepts.

KUBERAY = ["cluster/kuberay/rayjob.yaml", "cluster/kuberay/raycluster.yaml"]


def _lock_pin(name):
    return re.search(rf"^{name}==([\d.]+)$", (ROOT / "requirements.lock").read_text(), re.M).group(1)


def _cluster_spec(doc):
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _pods(spec):
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def test_dockerfile_builds_ray_and_the_pins_of_the_lock_and_makefile():
    text = (ROOT / "cluster/Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:([\d.]+)-py(\d)(\d+)-gpu$", text, re.M)
    assert base and base.group(1) == _lock_pin("ray")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(f"{base.group(2)}.{base.group(3)}")  # the image's Python will do
    make_pins = set(re.findall(r"torch(?:vision)?==[\d.]+", (ROOT / "Makefile").read_text()))
    assert make_pins and make_pins <= set(re.findall(r"torch(?:vision)?==[\d.]+", text))
    assert "-r requirements.lock" in text and "--no-deps -e ." in text
    assert "RAYPREF_GIT_SHA=${GIT_SHA}" in text  # no .git/ in the image: the commit comes from the build
    ignore = (ROOT / "cluster/Dockerfile.dockerignore").read_text().split()
    assert {".venv/", "runs/", ".git/"} <= set(ignore)


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_manifest_matches_ray_keeps_dashboard_on_loopback_and_uses_token_auth(name):
    doc = _load(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in {"RayJob", "RayCluster"}
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == _lock_pin("ray")
    assert spec["authOptions"] == {"mode": "token", "secretName": "raypref-ray-token"}
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    images = set()
    for pod in _pods(spec):
        for c in pod["containers"]:
            images.add(c["image"])
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_USAGE_STATS_ENABLED"]["value"] == "0"
            # judges read their key on the workers, train pcclip's LLM texts in the driver on the head
            assert env["RAYPREF_JUDGE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "raypref-judge"
            for e in env.values():  # secrets only by reference, never a literal key
                if "KEY" in e["name"] or "TOKEN" in e["name"]:
                    assert "value" not in e and e["valueFrom"]["secretKeyRef"]["name"]
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            assert mounts == {"runs": "/mnt/raypref", "shm": "/dev/shm"}
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["shm"]["emptyDir"]["medium"] == "Memory" and vols["runs"]["persistentVolumeClaim"]["claimName"]
    assert images == {"REGISTRY/raypref:TAG"}  # one image everywhere: cluster/Dockerfile's
    for g in spec["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_rayjob_entrypoint_is_a_job_whose_config_loads_here():
    from raypref.config import load_config

    doc = _load("cluster/kuberay/rayjob.yaml")
    # the sidecar submitter reaches the head's loopback dashboard; it needs the head never restarted
    assert doc["spec"]["submissionMode"] == "SidecarMode"
    assert doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["restartPolicy"] == "Never"
    cd, cmd = doc["spec"]["entrypoint"].split(" && ")
    assert cd == "cd /home/ray/raypref" and "WORKDIR /home/ray/raypref" in (ROOT / "cluster/Dockerfile").read_text()
    args = cmd.split()
    assert args[:2] == ["python", "-m"] and args[2].startswith("jobs.")
    assert (ROOT / (args[2].replace(".", "/") + ".py")).is_file()
    assert args[3] == "--config"
    cfg = load_config(ROOT / args[4], args[5:])  # the job's own parsing: a bad key or value fails here
    assert cfg.output_dir.startswith("/mnt/raypref/")  # on the volume every pod mounts


def test_a_submitted_job_refuses_a_relative_output_dir_or_export_dir_in_its_temporary_working_dir():
    import json

    from jobs._args import check_output_dir
    from raypref.config import validate

    job = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0a1b.zip"}})}
    with pytest.raises(ValueError, match=r"output_dir: 'runs/x' is relative.*output_dir=/mnt/raypref/runs/x"):
        check_output_dir(validate({"output_dir": "runs/x"}), environ=job)
    check_output_dir(validate({"output_dir": "/mnt/raypref/runs/x"}), environ=job)  # absolute: fine
    check_output_dir(validate({"output_dir": "runs/x"}), environ={})  # not a submitted job: a local run
    no_dir = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {}})}
    check_output_dir(validate({"output_dir": "runs/x"}), environ=no_dir)  # a job run where it was started
    # an export goes where its key says, not under output_dir: the same holds for it
    for stage, section, key in (("train_reward", "reward", "reward"), ("train_pcclip", "pcclip", "pcclip"),
                                ("pretrain_t2i", "pretrain", "pretrain.t2i"), ("pretrain_clip", "pretrain", "pretrain.clip")):
        inner = {"export_dir": "models/m"}
        conf = {"output_dir": "/mnt/raypref/runs/x", section: {key.split(".")[1]: inner} if "." in key else inner}
        with pytest.raises(ValueError, match=rf"^{key}.export_dir: 'models/m' is relative.*{key}.export_dir=/mnt/raypref/models/m$"):
            check_output_dir(validate(conf), [stage], job)
        check_output_dir(validate(conf), [stage], {})
        check_output_dir(validate(conf), ["build"], job)  # a job that never exports does not read it (a shared config)
    import importlib.util

    from jobs._args import EXPORTS

    # run_job names a job's stage by its module: each exporting stage is a job of that name
    assert all(importlib.util.find_spec(f"jobs.{stage}") for stage in EXPORTS)


def test_a_submitted_sweep_refuses_a_points_relative_export_dir_before_anything_runs(tmp_path, monkeypatch):
    import json

    from jobs.sweep import main
    from raypref.config import validate

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0a1b.zip"}}))
    out = tmp_path / "run"
    grid = {"output_dir": str(out), "sweep": {"stages": ["train_reward"], "grid": {"reward.export_dir": ["models/a"]}}}
    with pytest.raises(ValueError, match=r"^sweep point 1/1 \(reward.export_dir; .*\): reward.export_dir \(from sweep.grid\) is relative"):
        main(validate(grid))
    put = {"output_dir": str(out), "sweep": {"stages": ["train_reward"], "grid": {"reward.seed": [1, 2]},
                                             "set": {"reward.export_dir": "models/c"}}}
    with pytest.raises(ValueError, match=r"^sweep point 1/2 \(reward.seed; .*\): reward.export_dir \(from sweep.set\)"):
        main(validate(put))
    assert not out.exists()  # refused before the sweep wrote anything
    from jobs._args import check_point_dirs

    # an export of a stage the sweep does not run is not read: not refused
    check_point_dirs(validate({**put, "sweep": {**put["sweep"], "set": {"pretrain.clip.export_dir": "models/c"}}}))

    # under '{point}', the point's own (absolute) output_dir: fine
    check_point_dirs(validate({**grid, "sweep": {**grid["sweep"], "grid": {"reward.export_dir": ["{point}/m"]}}}))
