"""One summary line per stage, for people; the full summaries are JSON in each stage dir."""

from __future__ import annotations

from raypref.train_checkpoint import mean_of


def value_text(x, spec=".4f") -> str:
    return "n/a" if x is None or x != x else format(x, spec)  # None or NaN: no value


def _exact(acc: dict) -> str:
    """', exact accuracy base A (CI) -> tuned B (CI), +D points (CI)' for the 'overall' aspect."""
    if "overall" not in acc:
        return ""
    b, t, d = acc["overall"]["base"], acc["overall"]["tuned"], acc["overall"]["diff"]
    return (
        f"; exact accuracy base {b['accuracy']:.3f} (95% CI {b['ci95'][0]:.3f}-{b['ci95'][1]:.3f}) -> tuned "
        f"{t['accuracy']:.3f} (95% CI {t['ci95'][0]:.3f}-{t['ci95'][1]:.3f}), {100 * d['diff']:+.1f} points "
        f"(95% CI {100 * d['ci95'][0]:+.1f} to {100 * d['ci95'][1]:+.1f})"
    )


def _quarantined(s: dict) -> str:
    q = s.get("quarantined") or {}
    return f"{sum(q.values())} quarantined" + (f" [{', '.join(f'{k} {v}' for k, v in q.items())}]" if q else "")


def summary_line(stage: str, s: dict, where: str) -> str:
    if stage in ("build", "pair"):
        # a rerun with a smaller build.limit reads fewer prompts than the stored groups hold, which the
        # samples and pairs count; the duplicates and the prompts quarantine are of this run's read
        read = s.get("prompts_read", s["prompts"])
        by = {k: v for k, v in (s.get("unscored_by_scorer") or {}).items() if v}
        return (
            f"[{stage}] {s['prompts']} prompts"
            + (f" ({read} read this run)" if stage == "build" and read != s["prompts"] else "")
            + f" -> {s['samples']} samples -> {s['pairs']} pairs "
            f"({s['prompts_without_pair']} prompts without a pair, {s['samples_without_score']} samples unscored"
            + (f" [{', '.join(f'{k} {v}' for k, v in by.items())}]" if by else "")
            + f", {s['duplicate_prompts_dropped']} duplicate prompts dropped, {_quarantined(s)}) in {s['seconds']}s -> {where}"
        )
    if stage == "train" and s.get("method") == "sft":
        return (
            f"[train] sft ({s['finetune']}) on {s['images']} images of {s['prompts']} prompts (top {s['top_p']:g} of "
            + (f"{s['images_scored']}" if s.get("per_prompt") is None else
               f"each prompt's best {s['per_prompt']}, {s['images_eligible']} of {s['images_scored']}")
            + f" by {s['score']}, cut {value_text(s['score_cut'])}; {s['images_unscored']} unscored), {s['workers']} worker(s), "
            f"step {s['final_step']}: loss {value_text(s['first_loss'])} -> {value_text(s['last_loss'])} in {s['seconds']}s -> {s['weights']}"
        )
    if stage == "train" and s.get("method") == "refl":
        r0, r1 = s["reward_first_last"] or (None, None)
        return (
            f"[train] refl ({s['finetune']}) on {s['prompts']} prompts, reward: {s['scorer']} ({s['head']}), "
            f"{s['workers']} worker(s), step {s['final_step']}: reward ({mean_of(s['final_step'])}) {value_text(r0)} -> {value_text(r1)}, "
            f"{value_text(s['below_margin'], '.0%')} of images below the margin {s['margin']:g}"
            + (f", pretraining loss (x {s['pretrain_weight']:g}) {value_text(s['pretrain_loss_first_last'][0])} -> "
               f"{value_text(s['pretrain_loss_first_last'][1])}" if s.get("pretrain_loss_first_last") else "")
            + f" in {s['seconds']}s -> {s['weights']}"
            + ("\n[train] refl: WARNING no image scored below train.refl.margin, so none gave a gradient and the "
               "model did not change; raise the margin above the scorer's range" if s["below_margin"] == 0 else "")
        )
    if stage == "train":
        return (
            f"[train] dpo ({s['finetune']}) on {s['pairs']} pairs"
            + (f" ({s['ties_left_out']} ties left out)" if s.get("ties_left_out") else "")
            + f", {s['workers']} worker(s), step {s['final_step']}: "
            f"loss {value_text(s['first_loss'])} -> {value_text(s['last_loss'])}, implicit acc {value_text(s['last_implicit_acc'], '.2f')} "
            f"in {s['seconds']}s -> {s['weights']}"
        )
    if stage == "eval":
        lo, hi = s["win_rate_ci95"]
        return (
            f"[eval] tuned vs base on {s['prompts']} held-out prompts x seeds (n={s['n']} pairs compared"
            + (f", {s['skipped_nan']} left out for a NaN score" if s.get("skipped_nan") else "")
            + (f", {s['duplicate_prompts_dropped']} duplicate prompts dropped" if s.get("duplicate_prompts_dropped") else "")
            + f"), judged by {s['scorer']}: "
            f"win rate {value_text(s['win_rate'], '.3f')} (95% CI {value_text(lo, '.3f')}-{value_text(hi, '.3f')}), wins/ties/losses "
            f"{s['wins']}/{s['ties']}/{s['losses']}, mean {value_text(s['base_mean'], '.3f')} -> {value_text(s['tuned_mean'], '.3f')}"
            + (f", {_quarantined(s)}" if s.get("quarantined") else "")
            + "".join(f", {side} judge events " + " ".join(f"{k} {v}" for k, v in ev.items())
                      for side, ev in (s.get("judge_events") or {}).items() if ev)
            + _exact(s.get("accuracy") or {}) + f" -> {where}"
        )
    if stage == "pretrain":
        parts = [f"[pretrain] {s['what']} on {s['workers']} worker(s)"]
        if s.get("vae_loss"):
            parts.append(f"vae {s['vae_steps']} steps, loss {value_text(s['vae_loss'][0])} -> {value_text(s['vae_loss'][1])}")
        key = "unet_steps" if "unet_steps" in s else "steps"
        if s.get("loss"):
            parts.append(f"{s[key]} steps, loss ({mean_of(s[key])}) {value_text(s['loss'][0])} -> {value_text(s['loss'][1])}")
        return ", ".join(parts) + f" in {s['seconds']}s -> {where}"
    raise ValueError(f"unknown stage {stage!r}")
