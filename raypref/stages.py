"""The stages as the CLI and jobs run them: start or join Ray, run, print the summary line."""

from __future__ import annotations

from raypref.config import Config
from raypref.report import summary_line

RANDOM_WEIGHTS_NOTE = (
    "NOTE: tiny:* models have random weights (built by this run into the cache). Their images are "
    "noise-like; the numbers below show the pipeline works, not that alignment improved."
)


SHAPES_NOTE = (
    "Shapes world: shapes:sd and shapes:clip are tiny models trained on rendered coloured shapes "
    "(shipped in the package); the 'shapes_vqa' scorer is the exact programmatic checker, so its "
    "accuracies are ground truth, not a learned judge's opinion."
)


def _refs(cfg: Config) -> list[str]:
    return [g.model for g in cfg.build.generators] + [s.model for s in cfg.build.scorers] + [cfg.train.base_model or ""]


def build(cfg: Config) -> dict:
    from raypref.build import run_build

    s = run_build(cfg)  # starts Ray once its inputs are checked
    print(summary_line("build", s, str(cfg.stage_dir("build"))), flush=True)
    return s


def pair(cfg: Config) -> dict:
    from raypref.build import run_pair

    s = run_pair(cfg)  # starts Ray once its inputs are checked
    print(summary_line("pair", s, str(cfg.stage_dir("pair"))), flush=True)
    return s


def report(cfg: Config) -> dict:
    """Dataset report of a stage dir; no Ray needed (it reads a few float columns)."""
    from pathlib import Path

    from raypref.dataset_report import write_report

    src = Path(cfg.report.input) if cfg.report.input else cfg.stage_dir("build")
    if not src.is_dir():
        raise FileNotFoundError(f"report.input: no stage dir at {src}")
    r = write_report(src)
    print(f"[report] {r['samples']} samples, {r['pairs']} pairs ({r['ties']} ties), "
          f"{len(r['generators'])} generator(s) with cross-generator pairs, plots {r['plots']} -> {src / 'report'}", flush=True)
    return r


def rank(cfg: Config) -> dict:
    """Quality-aware pair ranking; no Ray (a two-pass read of the pairs)."""
    from raypref.select import run_rank

    return run_rank(cfg)


def sweep(cfg: Config) -> dict:
    """The stages at every point of sweep.grid; a Ray session is started by the first stage that needs one."""
    from raypref.sweep import run_sweep

    return run_sweep(cfg)


def train_dpo(cfg: Config) -> dict:
    from raypref.train_dpo import run_train_dpo

    return _train_diffusion(cfg, "dpo", run_train_dpo)


def train_sft(cfg: Config) -> dict:
    from raypref.train_sft import run_train_sft

    return _train_diffusion(cfg, "sft", run_train_sft)


def train_refl(cfg: Config) -> dict:
    from raypref.train_refl import run_train_refl

    return _train_diffusion(cfg, "refl", run_train_refl)


def _train_diffusion(cfg: Config, method: str, run) -> dict:
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"method": method})})
    s = run(cfg)  # starts Ray once its inputs are checked
    print(summary_line("train", s, str(cfg.stage_dir("train"))), flush=True)
    return s


def train_reward(cfg: Config) -> dict:
    from raypref.train_reward import run_train_reward, summary_text

    s = run_train_reward(cfg)  # starts Ray once its inputs are checked
    print(summary_text(s), flush=True)
    return s


def train_pcclip(cfg: Config) -> dict:
    from raypref.train_pcclip import run_train_pcclip, summary_text

    s = run_train_pcclip(cfg)  # starts Ray once its inputs are checked
    print(summary_text(s), flush=True)
    return s


def accuracy(cfg: Config) -> dict:
    from raypref.pref_accuracy import run_accuracy

    s = run_accuracy(cfg)  # starts Ray once its inputs are checked
    print((cfg.stage_dir("accuracy") / "accuracy.md").read_text(), flush=True)
    return s

def evaluate(cfg: Config) -> dict:
    from raypref.evaluate import run_eval

    s = run_eval(cfg)  # starts Ray once its inputs are checked
    print(summary_line("eval", s, str(cfg.stage_dir("eval"))), flush=True)
    print((cfg.stage_dir("eval") / "win_rate.md").read_text(), flush=True)
    return s


def pretrain(cfg: Config, what: str) -> dict:
    """Pretrain a shapes-world model: 't2i' (the diffusers pipeline) or 'clip' (open_clip)."""
    if what == "t2i":
        from raypref.shapes.pretrain_t2i import run_pretrain_t2i as run
    elif what == "clip":
        from raypref.shapes.pretrain_clip import run_pretrain_clip as run
    else:
        raise ValueError(f"pretrain: unknown model {what!r} (t2i or clip)")
    s = run(cfg)  # starts Ray once its inputs are checked
    print(summary_line("pretrain", s, s["export"]), flush=True)
    return s


def demo(cfg: Config) -> dict:
    refs = _refs(cfg)
    if any(r.startswith("tiny:") for r in refs):
        print(RANDOM_WEIGHTS_NOTE, flush=True)
    if any(r.startswith("shapes:") for r in refs):
        print(SHAPES_NOTE, flush=True)
    return {"build": build(cfg), "train": train_dpo(cfg), "eval": evaluate(cfg)}
