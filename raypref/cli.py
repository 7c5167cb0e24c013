"""The ``raypref`` command. Every subcommand takes --config FILE and dotted overrides key=value."""

from __future__ import annotations

import argparse
import sys

from raypref.config import ConfigError, describe, load_config

EPILOG = (
    "Overrides: dotted keys, values parsed as YAML, e.g. build.generators.0.num_samples=4 "
    "train.num_workers=2 ray.address=auto. Without --config the embedded demo config is used. "
    "`raypref config --doc` lists every key."
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None, help="YAML config (default: the embedded demo config)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raypref", description="Align text-to-image models with AI feedback on Ray.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="generate -> score -> pair; writes build/{samples,pairs}", epilog=EPILOG)
    _add_common(p)
    p = sub.add_parser("pair", help="re-pair stored groups from their scores (no model runs); writes pair/{samples,pairs}", epilog=EPILOG)
    _add_common(p)
    p = sub.add_parser("rank", help="keep the global top p%% of pairs by a quality metric (no Ray); writes rank/pairs", epilog=EPILOG)
    _add_common(p)
    p = sub.add_parser("relabel", help="score imported pairs (Pick-a-Pic, HPD v2, ImageRewardDB, AGFSync, raypref) with "
                       "build.scorers; writes relabel/{pairs,quarantine}", epilog=EPILOG)
    _add_common(p)
    p = sub.add_parser("train", help="train on the pairs")
    tsub = p.add_subparsers(dest="method", required=True)
    p = tsub.add_parser("dpo", help="Diffusion-DPO with a LoRA, in Ray Train", epilog=EPILOG)
    _add_common(p)
    p = tsub.add_parser("sft", help="supervised fine-tuning with a LoRA on the top train.sft_top_p of the build's images "
                        "by train.sft_score (self-reward), in Ray Train; writes train/lora", epilog=EPILOG)
    _add_common(p)
    p = tsub.add_parser("pcclip", help="PC-CLIP: fine-tune an open_clip model so image-embedding differences match "
                        "difference texts, in Ray Train; writes pcclip/model", epilog=EPILOG)
    _add_common(p)
    p = tsub.add_parser("reward", help="a reward model (overall + per-aspect heads, Bradley-Terry) in Ray Train; "
                        "writes reward/model", epilog=EPILOG)
    _add_common(p)
    p = sub.add_parser("pretrain", help="pretrain a shapes-world model in Ray Train")
    psub = p.add_subparsers(dest="model", required=True)
    p = psub.add_parser("t2i", help="the tiny text-to-image pipeline (VAE, then UNet + text encoder)", epilog=EPILOG)
    _add_common(p)
    p = psub.add_parser("clip", help="the tiny open_clip model, contrastively", epilog=EPILOG)
    _add_common(p)
    p = sub.add_parser("accuracy", help="preference-prediction accuracy of scorers on a pairs dataset, side by side; "
                       "writes accuracy/accuracy.{md,csv,json}", epilog=EPILOG)
    _add_common(p)
    p = sub.add_parser("eval", help="base vs tuned win rate on held-out prompts", epilog=EPILOG)
    _add_common(p)
    p = sub.add_parser("report", help="dataset report of a stage dir (counts, score/margin histograms, per-generator "
                       "win rates); writes <dir>/report", epilog=EPILOG)
    _add_common(p)
    p = sub.add_parser("sweep", help="ablations and scaling curves: run sweep.stages at every point of sweep.grid; "
                       "writes sweep/{points/,results.{csv,md,json},<metric>.png}", epilog=EPILOG)
    _add_common(p)
    p = sub.add_parser("demo", help="build -> train dpo -> eval on the embedded default", epilog=EPILOG)
    _add_common(p)
    p = sub.add_parser("config", help="print the resolved config (or --doc: every key documented)", epilog=EPILOG)
    p.add_argument("--doc", action="store_true", help="list every key with type, default and description")
    _add_common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from raypref import stages
    from raypref.sweep import SweepFailed

    try:
        if args.command == "config" and args.doc:
            print("\n".join(describe()))
            return 0
        cfg = load_config(args.config, args.overrides)
        if args.command == "config":
            import yaml

            print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
        elif args.command == "build":
            stages.build(cfg)
        elif args.command == "pair":
            stages.pair(cfg)
        elif args.command == "rank":
            stages.rank(cfg)
        elif args.command == "sweep":
            stages.sweep(cfg)
        elif args.command == "relabel":
            from raypref.relabel import relabel

            relabel(cfg)
        elif args.command == "train" and args.method == "reward":
            stages.train_reward(cfg)
        elif args.command == "train" and args.method == "sft":
            stages.train_sft(cfg)
        elif args.command == "train" and args.method == "pcclip":
            stages.train_pcclip(cfg)
        elif args.command == "train":
            stages.train_dpo(cfg)
        elif args.command == "accuracy":
            stages.accuracy(cfg)
        elif args.command == "pretrain":
            stages.pretrain(cfg, args.model)
        elif args.command == "eval":
            stages.evaluate(cfg)
        elif args.command == "report":
            stages.report(cfg)
        elif args.command == "demo":
            stages.demo(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"raypref {args.command}: error: {e}", file=sys.stderr)
        return 2
    except SweepFailed as e:
        print(f"raypref {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
