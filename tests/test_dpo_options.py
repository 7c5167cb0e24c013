"""The DPO / SFT loop's options without Ray: dropped prompts, the regression target per
prediction type, the optimizer and its schedule, and the learning rate's default."""

import numpy as np
import pytest
import torch
from PIL import Image

from raypref.config import validate
from raypref.train_checkpoint import scheduled_optimizer
from raypref.train_dpo import drop_prompts, noised, worker_generators


def test_drop_prompts_blanks_each_row_with_its_own_draw():
    prompts = [f"p{i}" for i in range(2000)]
    assert drop_prompts(prompts, 0.0, torch.Generator().manual_seed(0)) == prompts
    out = drop_prompts(prompts, 0.2, torch.Generator().manual_seed(0))
    expect = torch.rand(2000, generator=torch.Generator().manual_seed(0)) >= 0.2  # the same draws, kept where >= p
    assert out == [p if k else "" for p, k in zip(prompts, expect.tolist())]
    assert 0.17 < out.count("") / 2000 < 0.23  # about the asked share (Wallace et al.'s 0.2)
    assert drop_prompts(prompts, 0.2, torch.Generator().manual_seed(1)) != out


def test_a_workers_noise_drop_and_mirror_streams_never_share_a_seed():
    # seed 0 on rank 0 once gave the noise and the dropped prompts the same seed (`step`), so the rows blanked
    # followed the first noise values drawn; the noise and mirror streams keep their seeds
    seeds = {}
    for seed in (0, 1, 7):
        for rank in (0, 1, 2):
            for step in (0, 1, 1009, 100003):
                gen, drop, mirror = worker_generators(seed, rank, step)
                assert gen.initial_seed() == seed * 100003 + rank * 1009 + step
                assert len({gen.initial_seed(), drop.initial_seed(), mirror.initial_seed()}) == 3, (seed, rank, step)
                for g in (drop, mirror):  # nor does a drop or mirror stream repeat another worker's
                    assert seeds.setdefault(g.initial_seed(), (seed, rank, step)) == (seed, rank, step)
                # the mirror stream keeps its earlier seed too
                assert mirror.initial_seed() == int(np.random.SeedSequence([seed, rank, step, 2]).generate_state(1)[0])


def test_the_regression_target_follows_the_schedulers_prediction_type():
    from diffusers import DDPMScheduler

    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    a = DDPMScheduler().alphas_cumprod[t].view(-1, 1, 1, 1)
    for kind, target in (("epsilon", noise), ("sample", latents),
                         ("v_prediction", a.sqrt() * noise - (1 - a).sqrt() * latents)):  # v = sqrt(a) eps - sqrt(1-a) x0
        x_t, got = noised(DDPMScheduler(prediction_type=kind), latents, noise, t)
        torch.testing.assert_close(x_t, a.sqrt() * latents + (1 - a).sqrt() * noise)
        torch.testing.assert_close(got, target)
    odd = DDPMScheduler()
    odd.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type 'flow' is not one of epsilon, v_prediction, sample"):
        noised(odd, latents, noise, t)


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))]


def test_adafactor_keeps_factored_state_and_both_optimizers_learn(tmp_path):
    state = {}
    for kind in ("adamw", "adafactor"):
        params = _params()
        before = [p.detach().clone() for p in params]
        opt, _ = scheduled_optimizer(params, 1e-2, "constant", 0, 10, None, 0, kind=kind)
        (params[0].sum() + params[1].square().sum()).backward()
        opt.step()
        assert all(not torch.equal(b, p) for b, p in zip(before, params))
        state[kind] = sum(t.numel() for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
        torch.save(opt.state_dict(), tmp_path / f"{kind}.pt")
    assert state["adamw"] == 2 * (64 * 32 + 32)  # two moments per weight
    assert state["adafactor"] == (64 + 32) + 32  # a row and a column factor for the matrix, the vector whole
    # a checkpointed state loads back the way the loop resumes it (weights_only)
    opt, _ = scheduled_optimizer(_params(), 1e-2, "constant", 0, 10, str(tmp_path), 1, "adafactor.pt", "adafactor")
    assert opt.state_dict()["state"].keys() == torch.load(tmp_path / "adafactor.pt", weights_only=True)["state"].keys()
    with pytest.raises(ValueError, match="'sgd' is not one of adamw, adafactor"):
        scheduled_optimizer(_params(), 1e-2, "constant", 0, 10, None, 0, kind="sgd")


def test_a_resumed_schedule_continues_the_same_curve(tmp_path):
    params = _params()
    opt, sched = scheduled_optimizer(params, 1e-3, "constant_with_warmup", 4, 10, None, 0)
    rates = []
    for _ in range(6):
        rates.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert rates[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])  # linear warm-up over 4 steps, then flat
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    _, resumed = scheduled_optimizer(params, 1e-3, "constant_with_warmup", 4, 10, str(tmp_path), 2, "o.pt")
    assert resumed.get_last_lr()[0] == pytest.approx(rates[2])


def test_the_learning_rate_defaults_by_what_trains_even_in_an_edited_dump():
    assert validate({}).train.lr == 1e-4
    assert validate({"train": {"finetune": "full"}}).train.lr == 1e-5
    assert validate({"train": {"finetune": "full", "learning_rate": 3e-5}}).train.lr == 3e-5
    # a sweep point is the dumped config with its keys set: a full fine-tune point gets its own default
    d = validate({}).model_dump(mode="json")
    d["train"]["finetune"] = "full"
    assert validate(d).train.lr == 1e-5


def test_a_record_from_before_refl_sampler_existed_was_made_with_ddim(tmp_path):
    from raypref.config import record_settings, settings_changed

    old = tmp_path / "run.json"
    record_settings(old, {"train": {"refl": {"num_inference_steps": 20}}})  # before train.refl.sampler
    assert settings_changed(old, {"train": {"refl": {"num_inference_steps": 20, "sampler": "ddim"}}}) is None
    assert settings_changed(old, {"train": {"refl": {"num_inference_steps": 20, "sampler": "ddpm"}}}) == \
        "train.refl.sampler: (not set) -> 'ddpm'"


def test_a_record_from_before_hflip_existed_resumes_while_the_new_keys_hold_their_defaults(tmp_path):
    # train.hflip_swap is a dict: a record without it is compared with its default key by key
    from raypref.config import TrainConf, record_settings, settings_changed

    old = tmp_path / "run.json"
    before = {k: v for k, v in TrainConf().model_dump(mode="json").items() if k not in ("hflip", "hflip_swap")}
    record_settings(old, {"train": before})
    assert settings_changed(old, {"train": TrainConf().model_dump(mode="json")}) is None
    assert settings_changed(old, {"train": TrainConf(hflip=0.5).model_dump(mode="json")}) == "train.hflip: (not set) -> '0.5'"
    swapped = TrainConf(hflip_swap={"left": "right", "right": "left", "top": "top"}).model_dump(mode="json")
    assert settings_changed(old, {"train": swapped}) == "train.hflip_swap.top: (not set) -> 'top'"


def test_hflip_draws_nothing_when_off_and_mirrors_both_images_of_a_pair_with_its_prompt():
    from raypref.mirroring import draw_flips, mirror_images, mirror_prompts

    gen = torch.Generator().manual_seed(0)
    assert draw_flips(4, 0.0, gen) is None
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())  # the stream is untouched
    assert draw_flips(3, 1.0, gen).tolist() == [True, True, True]
    flips = draw_flips(1000, 0.5, torch.Generator().manual_seed(1))
    assert 400 < flips.sum() < 600  # about half
    flip = np.array([True, False])
    assert mirror_prompts(["a circle left of a square", "a circle left of a square"], flip, {"left": "right"}) == \
        ["a circle right of a square", "a circle left of a square"]
    im = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(1, 4, 3))
    out = mirror_images([im, im], flip)
    assert np.asarray(out[0]).tolist() == np.asarray(im)[:, ::-1].tolist() and out[1] is im


def test_a_mirrored_pair_encodes_as_its_mirrored_images(tiny_sd):
    # pair_batch_to_latents with flip: both images of the first pair mirrored, the second pair's as they were
    from diffusers import AutoencoderKL
    from PIL import ImageOps

    from raypref import images as I
    from raypref import schema as S
    from raypref.train_dpo import pair_batch_to_latents

    vae = AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae")
    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)) for _ in range(4)]
    calls = []

    class Texts:  # records the prompts; SD conditioning has no size ids to mirror
        def __call__(self, prompts):
            calls.append(list(prompts))
            return self

        def repeat(self, n):
            return self

        def with_sizes(self, boxes, size):
            calls.append(boxes)
            return self

    def batch(images):
        return {S.CHOSEN_ID: np.array(["a", "b"], dtype=object), S.PROMPT: np.array(["p", "q"], dtype=object),
                S.CHOSEN_IMAGE: np.array([I.encode(x) for x in images[:2]], dtype=object),
                S.REJECTED_IMAGE: np.array([I.encode(x) for x in images[2:]], dtype=object)}

    torch.manual_seed(0)
    flipped, _ = pair_batch_to_latents(batch(pics), Texts(), vae, 32, "cpu", np.array([True, False]))
    torch.manual_seed(0)
    by_hand = [ImageOps.mirror(pics[0]), pics[1], ImageOps.mirror(pics[2]), pics[3]]
    expected, _ = pair_batch_to_latents(batch(by_hand), Texts(), vae, 32, "cpu")
    torch.testing.assert_close(flipped, expected)
    assert calls[0] == ["p", "q"]  # the prompts are the caller's to swap (mirror_prompts), not swapped here
