"""Shared fixtures: offline hub, a token-authenticated session-wide local Ray, tiny models."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

# Before anything imports huggingface_hub or ray: no hub lookups (they hang ~46 s offline), no
# usage stats, and token auth turned on deliberately with a token this test session owns, so
# local Ray, `ray start` and `ray job submit` all run authenticated, as Ray 2.60 does by default.
# Made once: a second import of this module (as tests.conftest, or in a Ray worker, which inherits
# the environment) reuses the dir and token instead of making and leaking another.
# Only the process that made the dir removes it: a pytest a test starts (it inherits the environment) must
# not delete the running session's token and model cache when it exits.
_OWNS_SESSION_DIR = not os.environ.get("RAYPREF_TEST_SESSION_DIR")
if not _OWNS_SESSION_DIR:
    _SESSION_DIR = Path(os.environ["RAYPREF_TEST_SESSION_DIR"])
else:
    _SESSION_DIR = Path(tempfile.mkdtemp(prefix="raypref-tests-"))
    os.environ["RAYPREF_TEST_SESSION_DIR"] = str(_SESSION_DIR)
    (_SESSION_DIR / "ray_auth_token").write_text(secrets.token_hex(32))
_TOKEN = _SESSION_DIR / "ray_auth_token"
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(_TOKEN),
        "RAYPREF_CACHE": os.environ.get("RAYPREF_TEST_CACHE", str(_SESSION_DIR / "cache")),
        "TOKENIZERS_PARALLELISM": "false",
        # Ray Train's controller polls its workers every 2 s by default: tiny runs finish in seconds,
        # and each fit waited out several polls (about 10% of a training test's time here)
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    }
)
os.environ.pop("RAY_ADDRESS", None)

REPO = Path(__file__).resolve().parent.parent


def pytest_unconfigure(config):
    # the session dir holds the token and the model cache (tens of MB); left behind, every run
    # adds to /tmp until the disk fills
    if _OWNS_SESSION_DIR:
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


def tiny_config_dict(out: Path, prompts: Path, **build) -> dict:
    """A small config on the tiny models: 4 samples/prompt, 2 denoising steps."""
    cfg = {
        "output_dir": str(out),
        "ray": {"num_cpus": 8},
        "build": {
            "prompts": str(prompts),
            "shard_size": 2,
            "generators": [
                {
                    "name": "tiny",
                    "model": "tiny:sd",
                    "num_samples": 4,
                    "num_inference_steps": 2,
                    "guidance_scale": 2.0,
                    "embedding_noise_sigma": 0.1,
                    "pool": {"batch_size": 2, "num_cpus": 1},
                }
            ],
            "scorers": [
                {"name": "clip", "cls": "clip_score", "model": "tiny:clip", "weight": 0.9, "normalize": "zscore",
                 "args": {"floor_at_zero": False}, "pool": {"batch_size": 4, "num_cpus": 1}},
                {"name": "jpeg", "cls": "jpeg_compressibility", "weight": 0.1, "normalize": "zscore",
                 "pool": {"batch_size": 4, "num_cpus": 0.5}},
            ],
        },
        "train": {"beta": 500.0, "batch_size": 2, "max_steps": 2, "checkpoint_every": 1, "learning_rate": 1e-3},
        "eval": {"prompts": str(prompts), "num_samples": 1, "scorer": "clip"},
    }
    cfg["build"].update(build)
    return cfg


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def ray_session(pytestconfig):
    from raypref.config import RayConf
    from raypref.session import init_ray

    # as the stages start it: the dashboard on loopback (it serves the state API that Ray Train's
    # placement-group cleaner polls) and ray.data_context's defaults
    # a minimal Ray (without the ray[default] packages, as carried to a GPU machine) cannot start a dashboard;
    # Ray's own list of what the dashboard needs is the module this imports
    try:
        import ray.dashboard.optional_deps  # noqa: F401

        dashboard = True
    except ImportError:
        dashboard = False
    # otherwise RayConf's defaults, as users get them: test_session reads where the dashboard was put
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ray = init_ray(RayConf(num_cpus=8, include_dashboard=dashboard))
    print(out.getvalue(), end="")
    pytestconfig.stash[RAY_STARTED] = out.getvalue().strip()
    yield ray
    ray.shutdown()


RAY_STARTED = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def ray_started_line(ray_session, pytestconfig) -> str:
    """The line init_ray announced the session's Ray with."""
    return pytestconfig.stash[RAY_STARTED]


@pytest.fixture(scope="session")
def tiny_sd() -> str:
    from raypref.models import resolve_model

    return resolve_model("tiny:sd")


@pytest.fixture(scope="session")
def tiny_sdxl() -> str:
    from raypref.models import resolve_model

    return resolve_model("tiny:sdxl")


@pytest.fixture(scope="session")
def tiny_clip() -> str:
    from raypref.models import resolve_model

    return resolve_model("tiny:clip")


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    p = tmp_path / "prompts.txt"
    p.write_text("a red circle\na blue square on the left\ntwo green stars\na yellow triangle at the top\n")
    return p


@pytest.fixture(scope="session")
def built_run(ray_session, session_dir, tiny_sd, tiny_clip):
    """One small build shared by the train and eval tests."""
    from raypref.build import run_build
    from raypref.config import validate

    prompts = session_dir / "shared_prompts.txt"
    prompts.write_text("a red circle\na blue square on the left\ntwo green stars\na yellow triangle at the top\n")
    cfg = validate(tiny_config_dict(session_dir / "run", prompts))
    summary = run_build(cfg)
    return cfg, summary


@pytest.fixture
def ray_refused(monkeypatch):
    """Starting Ray fails the test: for checks that must refuse a run before it. The modules that import
    init_ray by name are imported first and patched too; one first imported while only raypref.session
    was patched would keep the refusing function for the rest of the session."""
    import raypref.shapes.pretrain_clip
    import raypref.shapes.pretrain_t2i
    import raypref.train_dpo
    import raypref.train_pcclip
    from raypref import session

    def refuse(*a, **k):
        raise AssertionError("Ray was started before the inputs were checked")

    for module in (session, raypref.train_dpo, raypref.train_pcclip, raypref.shapes.pretrain_t2i,
                   raypref.shapes.pretrain_clip):
        monkeypatch.setattr(module, "init_ray", refuse)
