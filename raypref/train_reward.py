"""Train a reward model (raypref.reward_model) on preference pairs, data-parallel in Ray Train.

Pairs are read with Ray Data and split deterministically by prompt id into train and held-out
(``heldout_mask``: the same prompt never lands on both sides). The loss is Bradley-Terry on the
overall head (target = the pair's label: 1.0 strict, 0.5 tie) plus, with ``reward.aspect_scorer``,
Bradley-Terry on each aspect head with targets from that scorer's aspect columns
(``reward_model.preference_targets``: equal aspect scores are a 0.5 target, NaN is masked).

Every step's metrics and, every ``eval_every`` steps (and at steps 0 and last), the held-out loss
and accuracy go to the history (<output_dir>/reward/metrics.jsonl). Checkpoints (model export +
optimizer + step) are reported to <output_dir>/reward/ray; rerunning the same config resumes from
the latest. The final model is exported to <output_dir>/reward/model (or reward.export_dir),
loadable with ``RewardModel.load`` and as the 'reward_model' scorer.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from raypref import schema as S
from raypref.config import Config, write_run_meta
from raypref.metrics import json_text
from raypref.mirroring import mirror_images, mirror_prompts
from raypref.parquet_read import parquet_mb, read_parquet
from raypref.train_checkpoint import (TREND_STEPS, check_export_dir, check_rows_per_worker, data_dirs, first_last_means,
                                      fit_and_export, guard_resume, load_state, mean_of, report_step)

MODEL_DIR = "model"  # inside each checkpoint, and the exported copy under <output_dir>/reward/
OPTIM_FILE = "optimizer.pt"
STAGE = "reward"


def heldout_mask(prompt_ids, fraction: float, seed: int = 0) -> np.ndarray:
    """True for pairs whose prompt goes to the held-out split: a stable hash of (seed, prompt id)
    mapped to [0, 1) falls below ``fraction``. Deterministic on every machine and run."""
    return _coin_below("reward-heldout", prompt_ids, fraction, seed)


def subset_mask(prompt_ids, fraction: float, seed: int = 0) -> np.ndarray:
    """True for pairs whose prompt is in reward.train_fraction's subset: a second stable hash of
    (seed, prompt id), independent of the held-out one, below ``fraction``. The subsets are nested
    (a prompt kept at 0.1 is kept at 0.2), so a data-size sweep adds prompts and never swaps them."""
    if fraction >= 1.0:
        return np.ones(len(prompt_ids), dtype=bool)
    return _coin_below("reward-subset", prompt_ids, fraction, seed)


def _coin_below(tag: str, prompt_ids, fraction: float, seed: int) -> np.ndarray:
    """A seeded per-prompt coin (S.unit_hash of tag, seed, prompt id) below ``fraction``; each tag is
    its own independent coin."""
    u = np.fromiter((S.unit_hash(tag, seed, p) for p in prompt_ids), dtype=np.float64, count=len(prompt_ids))
    return u < fraction


def _split(batch, fraction: float, seed: int, heldout: bool, train_fraction: float = 1.0):
    import pyarrow as pa

    ids = batch.column(S.PROMPT_ID).to_pylist()
    mask = heldout_mask(ids, fraction, seed)
    return batch.filter(pa.array(mask if heldout else ~mask & subset_mask(ids, train_fraction, seed)))


def _image(batch: dict, column: str, row: int):
    from raypref import images as I

    try:
        return I.decode(batch[column][row])
    except ValueError as e:
        raise ValueError(f"pairs row chosen_id={batch[S.CHOSEN_ID][row]!r}, {column}: {e}") from None


def distinct_images(chosen_ids, rejected_ids, prompts) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Each distinct (sample id, prompt) of a batch once: ([(side, row)] of its first occurrence,
    side 0 chosen / 1 rejected; then per pair the index of its chosen and of its rejected image in
    that list). all_pairs over k images of a prompt makes k(k-1)/2 pairs of only k images: a batch
    of whole prompts encodes each image once instead of k-1 times."""
    first: dict[tuple[str, str], int] = {}
    order: list[tuple[int, int]] = []
    index = np.empty((2, len(prompts)), dtype=np.int64)
    for side, ids in enumerate((chosen_ids, rejected_ids)):
        for row, (sid, prompt) in enumerate(zip(ids, prompts)):
            key = (str(sid), prompt)
            if key not in first:
                first[key] = len(order)
                order.append((side, row))
            index[side, row] = first[key]
    return order, index[0], index[1]


def _check_labels(batch: dict) -> None:
    label = np.asarray(batch[S.LABEL], dtype=np.float64)
    bad = np.flatnonzero(~((label >= 0) & (label <= 1)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"pairs row chosen_id={batch[S.CHOSEN_ID][i]!r}: {S.LABEL} {label[i]!r} is not in [0, 1] "
                         f"({bad.size} such rows in this batch)")


def forward_pairs(model, backbone, batch: dict, aspect_columns: list[str], device, flip: np.ndarray | None = None,
                  swap: dict[str, str] | None = None):
    """One forward over the distinct images of the batch (distinct_images): (chosen outputs,
    rejected outputs, targets) per pair. ``flip`` (per pair, the training-time augmentation):
    mirror both images left-right and swap the prompt's ``swap`` words, so the label still holds."""
    import torch

    from raypref.reward_model import batch_targets

    _check_labels(batch)
    flip = np.zeros(len(batch[S.PROMPT]), dtype=bool) if flip is None else np.asarray(flip, dtype=bool)
    prompts = mirror_prompts(batch[S.PROMPT], flip, swap or {})
    # a mirrored image is another image: the id carries the flip, so it is encoded apart
    ids = [[f"{i}|m" if f else str(i) for i, f in zip(batch[col], flip)] for col in (S.CHOSEN_ID, S.REJECTED_ID)]
    order, ci, ri = distinct_images(ids[0], ids[1], prompts)
    columns = (S.CHOSEN_IMAGE, S.REJECTED_IMAGE)
    images = [_image(batch, columns[side], row) for side, row in order]
    images = mirror_images(images, flip[[row for _, row in order]])
    pix, tok = backbone.inputs(images, [prompts[row] for _, row in order])
    # fp32 outputs: under bf16 autocast the losses and accuracies still compare in full precision
    out = {k: v.float() for k, v in model(pix.to(device), tok.to(device)).items()}
    ci, ri = torch.as_tensor(ci, device=device), torch.as_tensor(ri, device=device)
    chosen = {k: v[ci] for k, v in out.items()}
    rejected = {k: v[ri] for k, v in out.items()}
    label, target, mask = batch_targets(batch, aspect_columns)
    aspects = [k for k in out if k]
    stack = (lambda o: torch.stack([o[a] for a in aspects], dim=1)) if aspect_columns else (lambda o: None)
    return chosen, rejected, stack(chosen), stack(rejected), label.to(device), \
        None if target is None else target.to(device), None if mask is None else mask.to(device)


def evaluate(model, backbone, shard, c: dict, device) -> dict:
    """Held-out loss and accuracy, summed over every worker's shard (all-reduced)."""
    import torch
    import torch.distributed as dist

    from raypref.losses import bradley_terry_loss
    from raypref.train_step import autocast

    aspects = c["aspect_columns"]
    # sums: overall loss, pairs, overall correct, strict pairs, then per aspect: correct, strict
    sums = torch.zeros(4 + 2 * len(aspects), dtype=torch.float64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in shard.iter_batches(batch_size=c["batch_size"], batch_format="numpy"):
            with autocast(device, c["precision"]):
                oc, orj, ac, ar, label, target, mask = forward_pairs(model, backbone, batch, aspects, device)
            loss, m = bradley_terry_loss(oc[""], orj[""], label)
            n = float(len(label))
            sums[:4] += torch.tensor([float(loss) * n, n, float(m["accuracy"].nan_to_num(0)) * float(m["strict_pairs"]),
                                      float(m["strict_pairs"])], dtype=torch.float64)
            for j in range(len(aspects)):
                _, am = bradley_terry_loss(ac[:, j], ar[:, j], target[:, j], mask[:, j])
                sums[4 + 2 * j] += float(am["accuracy"].nan_to_num(0)) * float(am["strict_pairs"])
                sums[5 + 2 * j] += float(am["strict_pairs"])
    model.train(was_training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    s = sums.tolist()
    out = {"eval_pairs": int(s[1]), "eval_loss": s[0] / s[1] if s[1] else float("nan"),
           "eval_accuracy": s[2] / s[3] if s[3] else float("nan")}
    for j, col in enumerate(aspects):
        out[f"eval_accuracy_{col}"] = s[4 + 2 * j] / s[5 + 2 * j] if s[5 + 2 * j] else float("nan")
    return out


def reward_loop(c: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    from diffusers.optimization import get_scheduler

    from raypref.losses import reward_model_loss
    from raypref.prompt_shuffle import prompt_batches
    from raypref.reward_model import RewardModel
    from raypref.train_step import accumulate, micro_groups, skip_groups

    torch.manual_seed(c["seed"])
    device = ray.train.torch.get_device()
    rank = ray.train.get_context().get_world_rank()
    aspects = c["aspects"] if c["aspect_columns"] else []
    model = RewardModel.create(c["backbone"], c["backbone_pretrained"], aspects, c["hidden"], c["freeze"],
                               c["unfrozen_blocks"], c["backbone_kind"], c["film"])
    model.train()  # transformers loads BLIP in eval mode, where its gradient checkpointing is off
    # on the worker's device before the optimizer loads a checkpoint's state: load_state_dict puts each
    # state tensor on its parameter's device, and state left on the CPU fails the first GPU step
    model.to(device)
    if c["gradient_checkpointing"]:
        model.backbone.set_grad_checkpointing(True)
    state, history, ckpt_dir = load_state(ray.train.get_checkpoint())
    step = state.get("step", 0)
    if ckpt_dir is not None:
        model.load_weights(Path(ckpt_dir) / MODEL_DIR)
    groups = [{"params": model.head_parameters(), "lr": c["learning_rate"]}]
    if model.backbone_parameters():
        groups.append({"params": model.backbone_parameters(), "lr": c["backbone_learning_rate"]})
    opt = torch.optim.AdamW(groups, weight_decay=c["weight_decay"])
    sched = get_scheduler(c["lr_schedule"], opt, num_warmup_steps=c["warmup_steps"], num_training_steps=c["max_steps"])
    if ckpt_dir is not None:
        opt.load_state_dict(torch.load(Path(ckpt_dir) / OPTIM_FILE, map_location="cpu", weights_only=True))
        for _ in range(step):  # the schedule is a function of the step: replay it, as the pretrain loops do
            sched.step()
    backbone = model.backbone
    ddp = ray.train.torch.prepare_model(model)

    def write(d):
        model.save(Path(d) / MODEL_DIR)
        torch.save(opt.state_dict(), Path(d) / OPTIM_FILE)

    shard = ray.train.get_dataset_shard("train")
    eval_shard = ray.train.get_dataset_shard("eval")
    if step == 0:
        history.append({"step": 0, **evaluate(model, backbone, eval_shard, c, device)})
    # in_epoch: the optimizer steps the checkpoint had taken in its epoch, which a resume skips
    epoch, done = state.get("epoch", 0), state.get("in_epoch", 0)
    if step >= c["max_steps"]:  # a rerun of a finished run: report its final state again
        report_step(rank, {"step": step}, history, {"step": step, "epoch": epoch, "in_epoch": done}, write)
    t0 = time.time()
    flips = np.random.default_rng([c["seed"], rank, step])  # a resumed run draws anew from its step

    def forward(batch):
        # one draw per prompt: all its pairs mirror together, so each image is still encoded once
        draw = {p: flips.random() for p in dict.fromkeys(batch[S.PROMPT])}
        flip = np.array([draw[p] < c["hflip"] for p in batch[S.PROMPT]], dtype=bool)
        oc, orj, ac, ar, label, target, mask = forward_pairs(ddp, backbone, batch, c["aspect_columns"], device,
                                                             flip, c["hflip_swap"])
        return reward_model_loss(oc[""], orj[""], label, ac, ar, target, mask, c["aspect_weight"])

    while step < c["max_steps"]:
        # the groups a resumed epoch's checkpoint had trained on are read past, not trained again
        seen, skip, done = done, done, 0
        batches = shard.iter_batches(batch_size=c["batch_size"], batch_format="numpy", drop_last=False,
                                     local_shuffle_buffer_size=c["shuffle_buffer"] or None,
                                     local_shuffle_seed=c["seed"] * 1000003 + epoch * 1009 + rank)
        if c["prompt_shuffle_buffer"]:
            batches = prompt_batches(batches, c["batch_size"], c["prompt_shuffle_buffer"], S.PROMPT_ID,
                                     np.random.default_rng([c["seed"], rank, epoch]))
        for group in skip_groups(micro_groups(batches, c["grad_accum_steps"]), skip):
            seen += 1
            opt.zero_grad(set_to_none=True)
            loss, m, micro = accumulate(ddp, group, forward, device, c["precision"])
            torch.nn.utils.clip_grad_norm_(model.parameters(), c["max_grad_norm"])
            opt.step()
            lr = sched.get_last_lr()[0]  # the rate this step took
            sched.step()
            step += 1
            metrics = {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "micro_batches": micro,
                       **m, "seconds": round(time.time() - t0, 2)}
            last = step >= c["max_steps"]
            if last or step % c["eval_every"] == 0:
                metrics.update(evaluate(model, backbone, eval_shard, c, device))
            history.append(metrics)
            report_step(rank, metrics, history, {"step": step, "epoch": epoch, "in_epoch": seen},
                        write if last or step % c["checkpoint_every"] == 0 else None)
            if last:
                break
        if seen == 0:
            raise ValueError("reward: the pairs dataset gave this worker no batch; is it empty?")
        epoch += 1


def _order_key(batch, source: int, seed: int):
    """reward.interleave's sort key: a seeded hash of (pairs dir index, prompt id), the same for all
    of a prompt's pairs in one dir, so a sort keeps them together and mixes the dirs."""
    import pyarrow as pa

    ids = batch.column(S.PROMPT_ID).to_pylist()
    return batch.append_column(S.PAIR_ORDER, pa.array([S.stable_id("order", seed, source, p) for p in ids]))


def _small(paths: list[str], cache_max_mb: float) -> bool:
    """Local pairs under ``cache_max_mb``: read once into the object store, not once per epoch."""
    mb = parquet_mb(paths)
    return mb is not None and mb < cache_max_mb


_NEEDED = [S.PROMPT_ID, S.PROMPT, S.CHOSEN_ID, S.REJECTED_ID, S.CHOSEN_IMAGE, S.REJECTED_IMAGE, S.LABEL]


def _columns(aspect_columns: list[str]) -> list[str]:
    """What training reads of a pair: the pair, and both sides' score of each aspect column."""
    return _NEEDED + [f(c) for c in aspect_columns for f in (S.chosen_column, S.rejected_column)]


def check_pairs_columns(paths: list[str], aspect_columns: list[str]) -> None:
    """Every pairs dir in ``paths`` has the columns training reads (its schema alone is read, no Ray)."""
    import pyarrow.dataset as pds

    for path in paths:
        names = pds.dataset(path, format="parquet").schema.names
        missing = [c for c in _columns(aspect_columns) if c not in names]
        if missing:
            raise ValueError(f"reward.pairs: {path} lacks columns {missing} "
                             f"(its score columns: {S.pair_score_columns(names)}; reward.aspect_scorer names the scorer "
                             "whose aspect columns label the aspect heads)")


def _read_pairs(paths: list[str], aspect_columns: list[str], cache_max_mb: float, interleave_seed: int | None = None):
    """One Ray dataset over every pairs dir in ``paths`` (check_pairs_columns passed); with
    ``interleave_seed``, sorted by _order_key: in this process when the pairs are local and under
    ``cache_max_mb``, else by Ray Data."""
    import pyarrow.dataset as pds
    import ray.data

    needed, side = _NEEDED, _columns(aspect_columns)[len(_NEEDED):]
    small = _small(paths, cache_max_mb)
    if interleave_seed is not None and small:
        # small and local: read and sort in this process (a distributed sort costs seconds of tasks), the
        # same order as below; the table is then held in the object store, as a small dataset below is
        import pyarrow as pa

        tables = [_order_key(pds.dataset(p, format="parquet").to_table(columns=needed + side), i, interleave_seed)
                  for i, p in enumerate(paths)]
        return ray.data.from_arrow(pa.concat_tables(tables).sort_by(S.PAIR_ORDER).drop_columns([S.PAIR_ORDER]))
    if interleave_seed is None:
        ds = read_parquet(paths, columns=needed + side)
    else:
        parts = [read_parquet(p, columns=needed + side).map_batches(
            _order_key, fn_kwargs={"source": i, "seed": interleave_seed}, batch_format="pyarrow")
            for i, p in enumerate(paths)]
        ds = parts[0].union(*parts[1:]).sort(S.PAIR_ORDER).drop_columns([S.PAIR_ORDER])
    return ds.materialize() if small else ds


def split_counts(paths: list[str], fraction: float, seed: int, train_fraction: float = 1.0) -> tuple[int, int]:
    """(training, held-out) rows as _split makes them, from the prompt ids alone: a large set streams
    every epoch, and counting its splits should not read its images."""
    import pyarrow as pa

    def count(batch: pa.Table) -> pa.Table:
        ids = batch.column(S.PROMPT_ID).to_pylist()
        held = heldout_mask(ids, fraction, seed)
        train = ~held & subset_mask(ids, train_fraction, seed)
        return pa.table({"train": [int(train.sum())], "held": [int(held.sum())]})

    rows = read_parquet(paths, columns=[S.PROMPT_ID]).map_batches(count, batch_format="pyarrow").take_all()
    return sum(r["train"] for r in rows), sum(r["held"] for r in rows)


def run_train_reward(cfg: Config) -> dict:
    from raypref.models import resolve_model, resolve_pretrained
    from raypref.reward_model import aspect_score_columns
    from raypref.session import init_ray

    r = cfg.reward
    if r.export_dir:  # before Ray starts and reads the pairs, not after
        check_export_dir(Path(r.export_dir), cfg.stage_dir(STAGE).parent, "reward.export_dir")
    paths = data_dirs(r.pairs, cfg.stage_dir("build") / "pairs")
    for p in paths:
        if "://" not in p and not Path(p).exists():
            raise FileNotFoundError(f"reward.pairs: no pairs at {p} (run the build first, or set reward.pairs)")
    pairs = ", ".join(paths)
    if r.prompt_shuffle_buffer and r.shuffle_buffer:
        raise ValueError(f"reward.prompt_shuffle_buffer={r.prompt_shuffle_buffer} needs reward.shuffle_buffer=0 (got "
                         f"{r.shuffle_buffer}): a row shuffle would split the prompts it keeps whole")
    aspect_cols = aspect_score_columns(r.aspect_scorer, r.aspects) if r.aspect_scorer else []
    check_pairs_columns(paths, aspect_cols)
    backbone = resolve_model(r.backbone, what="reward.backbone")
    # blip reads no open_clip tag
    pretrained = r.backbone_pretrained if r.backbone_kind == "blip" else resolve_pretrained(
        backbone, r.backbone_pretrained, what="reward.backbone_pretrained")
    # a rerun with other settings is refused here, before Ray; the settings are recorded once the counts pass too
    guard_resume(cfg.stage_dir(STAGE), STAGE, STAGE, r.model_dump(mode="json"), write=False)
    init_ray(cfg.ray)  # once its inputs are checked (a no-op where the caller's Ray runs); the split counts need it
    ds = _read_pairs(paths, aspect_cols, r.cache_pairs_max_mb, r.seed if r.interleave else None)
    fn = {"fraction": r.heldout_fraction, "seed": r.seed}
    train = ds.map_batches(_split, fn_kwargs={**fn, "heldout": False, "train_fraction": r.train_fraction},
                           batch_format="pyarrow")
    held = ds.map_batches(_split, fn_kwargs={**fn, "heldout": True}, batch_format="pyarrow")
    cached = _small(paths, r.cache_pairs_max_mb)
    if cached:  # read once (_read_pairs): split once too, not once per epoch
        train, held = train.materialize(), held.materialize()
        n_train, n_held = train.count(), held.count()
    else:  # large: both splits stream from the files every epoch, never held whole in the object store
        n_train, n_held = split_counts(paths, r.heldout_fraction, r.seed, r.train_fraction)
    del ds  # the splits hold what training reads
    if n_train == 0 or n_held == 0:
        raise ValueError(f"reward: {pairs} splits into {n_train} training and {n_held} held-out pairs "
                         f"(reward.heldout_fraction={r.heldout_fraction}, reward.train_fraction={r.train_fraction}); "
                         "both need pairs from distinct prompts")
    check_rows_per_worker(n_train, "training pairs", r.num_workers, "reward.num_workers")
    # split as the training pairs are: a worker with none would report NaN for the whole held-out set
    check_rows_per_worker(n_held, "held-out pairs", r.num_workers, "reward.num_workers",
                          why=f" (reward.heldout_fraction={r.heldout_fraction})")
    # once every input is checked, the worker counts too: a refused run leaves output_dir (a resumed run's
    # records too) as it was
    out = write_run_meta(cfg, cfg.stage_dir(STAGE), STAGE,
                         guard=lambda: guard_resume(cfg.stage_dir(STAGE), STAGE, STAGE, r.model_dump(mode="json")))
    loop_cfg = r.model_dump()
    loop_cfg.update({"backbone": backbone, "backbone_pretrained": pretrained, "aspect_columns": aspect_cols})
    export = Path(r.export_dir) if r.export_dir else out / MODEL_DIR
    t0 = time.time()
    history = fit_and_export(reward_loop, r, loop_cfg, out, STAGE, MODEL_DIR, export,
                             datasets={"train": train, "eval": held}, section=STAGE)
    steps = [h for h in history if h["step"] > 0 and "loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    summary = {
        "pairs_train": n_train,
        "pairs_heldout": n_held,
        "pairs_cached": cached,  # held in Ray's object store (under reward.cache_pairs_max_mb), else read every epoch
        "train_fraction": r.train_fraction,
        "workers": r.num_workers,
        "aspect_columns": aspect_cols,
        "final_step": history[-1]["step"] if history else 0,
        "loss": first_last_means([h["loss"] for h in steps]),
        "loss_mean_of": min(TREND_STEPS, len(steps)),  # the steps each of the two loss means averages
        "eval_loss": [evals[0]["eval_loss"], evals[-1]["eval_loss"]] if evals else None,
        "eval_accuracy": [evals[0]["eval_accuracy"], evals[-1]["eval_accuracy"]] if evals else None,
        "eval_steps": [evals[0]["step"], evals[-1]["step"]] if evals else None,
        "export": str(export),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "summary.json").write_text(json_text(summary))
    return summary


def summary_text(s: dict) -> str:
    """The one-line summary the CLI prints."""
    def pair(x, spec):
        return "n/a" if not x else f"{x[0]:{spec}} -> {x[1]:{spec}}"

    steps = f"steps {s['eval_steps'][0]} -> {s['eval_steps'][1]}" if s.get("eval_steps") else "no eval"
    # the first and the last loss_mean_of steps: fewer than TREND_STEPS in a short run
    loss = f"loss ({mean_of(s['loss_mean_of'])}) {pair(s['loss'], '.4f')}" if s["loss"] else "loss n/a"
    return (f"[reward] {s['pairs_train']} training / {s['pairs_heldout']} held-out pairs, {s['workers']} worker(s), "
            f"step {s['final_step']}: {loss}; held-out ({steps}) loss "
            f"{pair(s['eval_loss'], '.4f')}, accuracy {pair(s['eval_accuracy'], '.3f')} in {s['seconds']}s -> {s['export']}")
