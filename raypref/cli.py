"""The ``raypref`` command. Every subcommand takes --config FILE and dotted overrides key=value."""

from __future__ import annotations

import argparse
import importlib
import sys

from raypref.config import ConfigError, describe, load_config

EPILOG = (
    "Overrides: dotted keys, values parsed as YAML, e.g. build.generators.0.num_samples=4 "
    "train.num_workers=2 ray.address=auto. Without --config the embedded demo config is used. "
    "`raypref config --doc` lists every key."
)


def _command(parent, name: str, help: str, run: str, *run_args: str) -> argparse.ArgumentParser:
    """A subcommand taking --config FILE and dotted overrides, that calls ``run`` ('module:function',
    imported only when chosen, so that `raypref config` loads no torch) with the config and ``run_args``."""
    p = parent.add_parser(name, help=help, description=help[0].upper() + help[1:].replace("%%", "%") + ".", epilog=EPILOG)
    p.set_defaults(run=run, run_args=run_args)
    p.add_argument("--config", "-c", default=None, help="YAML config (default: the embedded demo config)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    return p


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raypref", description="Align text-to-image models with AI feedback on Ray.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    _command(sub, "build", "generate -> score -> pair; writes build/{samples,pairs}", "raypref.stages:build")
    _command(sub, "pair", "re-pair stored groups from their scores (no model runs); writes pair/{samples,pairs}", "raypref.stages:pair")
    _command(sub, "rank", "keep the global top p%% of pairs by a quality metric (no Ray); writes rank/pairs", "raypref.stages:rank")
    _command(sub, "relabel", "score imported pairs (Pick-a-Pic, HPD v2, ImageRewardDB, AGFSync, raypref) with "
             "build.scorers; writes relabel/{pairs,quarantine}", "raypref.relabel:relabel")
    tsub = sub.add_parser("train", help="train: dpo, sft or refl (the diffusion model), reward (a reward model), pcclip (CLIP)").add_subparsers(dest="method", required=True)
    _command(tsub, "dpo", "Diffusion-DPO with a LoRA (or every UNet weight: train.finetune=full), in Ray Train; "
             "writes train/lora (or train/unet)", "raypref.stages:train_dpo")
    _command(tsub, "sft", "supervised fine-tuning (a LoRA, or train.finetune=full) on the top train.sft_top_p of "
             "the build's images by train.sft_score (self-reward), in Ray Train; writes train/lora (or train/unet)", "raypref.stages:train_sft")
    _command(tsub, "refl", "reward feedback learning (ImageReward's ReFL): the UNet (a LoRA, or train.finetune=full) "
             "learns from the gradient of train.refl.scorer on images it draws, in Ray Train; writes train/lora (or train/unet)", "raypref.stages:train_refl")
    _command(tsub, "pcclip", "PC-CLIP: fine-tune an open_clip model so image-embedding differences match "
             "difference texts, in Ray Train; writes pcclip/model", "raypref.stages:train_pcclip")
    _command(tsub, "reward", "a reward model (overall + per-aspect heads, Bradley-Terry) in Ray Train; writes reward/model", "raypref.stages:train_reward")
    psub = sub.add_parser("pretrain", help="pretrain a shapes-world model in Ray Train").add_subparsers(dest="model", required=True)
    _command(psub, "t2i", "the tiny text-to-image pipeline (VAE, then UNet + text encoder)", "raypref.stages:pretrain", "t2i")
    _command(psub, "clip", "the tiny open_clip model, contrastively", "raypref.stages:pretrain", "clip")
    _command(sub, "accuracy", "preference-prediction accuracy of scorers on a pairs dataset, side by side; "
             "writes accuracy/accuracy.{md,csv,json}", "raypref.stages:accuracy")
    _command(sub, "eval", "base vs tuned win rate on held-out prompts", "raypref.stages:evaluate")
    _command(sub, "report", "dataset report of a stage dir (counts, score/margin histograms, per-generator "
             "win rates); writes <dir>/report", "raypref.stages:report")
    _command(sub, "sweep", "ablations and scaling curves: run sweep.stages at every point of sweep.grid; "
             "writes sweep/{points/,results.{csv,md,json},<metric>.png}", "raypref.stages:sweep")
    _command(sub, "demo", "build -> train dpo -> eval on the embedded default", "raypref.stages:demo")
    _command(sub, "config", "print the resolved config (or --doc: every key documented)", "raypref.cli:print_config").add_argument(
        "--doc", action="store_true", help="list every key with type, default and description")
    return parser


def exit_status(prog: str, run) -> int:
    """0 once ``run()`` returns. A config or input error (its message names the key, file or row) is printed
    as '<prog>: error: ...' and gives 2, a sweep with failed points 1: the CLI and the jobs end alike."""
    from raypref.sweep import SweepFailed

    try:
        run()
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except SweepFailed as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return exit_status(f"raypref {args.command}", lambda: _run(args))


def _run(args) -> None:
    if args.command == "config" and args.doc:
        print("\n".join(describe()))
        return
    cfg = load_config(args.config, args.overrides)
    module, function = args.run.split(":")
    getattr(importlib.import_module(module), function)(cfg, *args.run_args)


def print_config(cfg) -> None:
    """`raypref config`: the resolved config, checked as a stage would check it."""
    import yaml

    from raypref.config import check_scorer_args

    check_scorer_args(cfg)  # as every stage does before it writes the config: a pasted key is not echoed
    # and as a sweep does for each point, sweep.set and grid applied; with stages and no grid, the sweep
    # is one point (the base config), whose metrics `raypref sweep` checks too
    if cfg.sweep.grid or cfg.sweep.set or cfg.sweep.stages:
        from raypref.sweep import check_point_args, point_configs, sweep_points

        # with stages to run, the sweep's own checks too (metrics, the x axis, fits)
        check_point_args(point_configs(cfg) if cfg.sweep.stages else sweep_points(cfg))
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")


if __name__ == "__main__":
    sys.exit(main())
