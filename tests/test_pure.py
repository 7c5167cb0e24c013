"""Pure functions on hand-computed values: DPO loss, normalisation, aggregation, pairs, metrics."""

import math

import numpy as np
import pytest
import torch

from raypref.aggregate import normalize, weighted_sum
from raypref.losses import diffusion_dpo_loss
from raypref.metrics import accuracy, paired_difference, wilson_interval, win_rate
from raypref.pairs import best_vs_worst, top_k_vs_bottom_k


def test_dpo_loss_hand_values():
    # pair 1: model improves the winner by 0.1 relative to ref, loser unchanged
    #   inside = -0.5*beta*((0.9-1.0) - (1.0-1.0)) = -0.5*10*(-0.1) = 0.5
    # pair 2: model worsens the winner by 0.2:  inside = -0.5*10*(0.2) = -1.0
    mw = torch.tensor([0.9, 1.2])
    ml = torch.tensor([1.0, 1.0])
    rw = torch.tensor([1.0, 1.0])
    rl = torch.tensor([1.0, 1.0])
    loss, m = diffusion_dpo_loss(mw, ml, rw, rl, beta=10.0)
    softplus = lambda x: math.log1p(math.exp(-x))  # -log sigmoid(x)
    expected = (softplus(0.5) + softplus(-1.0)) / 2  # mean of per-pair terms
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["implicit_acc"].item() == pytest.approx(0.5)
    assert m["inside_term"].item() == pytest.approx(-0.25)
    # not the logsigmoid of the batch-mean inside term
    assert loss.item() != pytest.approx(softplus(-0.25), rel=1e-3)


def test_dpo_loss_is_log2_when_model_equals_reference():
    e = torch.tensor([0.3, 0.7, 1.1])
    loss, _ = diffusion_dpo_loss(e, e.flip(0), e, e.flip(0), beta=5000.0)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)


def test_dpo_loss_gradient_favours_winner():
    mw = torch.tensor([1.0], requires_grad=True)
    ml = torch.tensor([1.0], requires_grad=True)
    loss, _ = diffusion_dpo_loss(mw, ml, torch.tensor([1.0]), torch.tensor([1.0]), beta=2.0)
    loss.backward()
    # d/d(mw) = -sigmoid(-x)*(-beta/2) at x=0 = 0.5*1 = 0.5 > 0: lowering winner error lowers loss
    assert mw.grad.item() == pytest.approx(0.5)
    assert ml.grad.item() == pytest.approx(-0.5)


def test_normalize_hand_values():
    x = [1.0, 2.0, 3.0, float("nan")]
    assert normalize(x, "raw")[:3].tolist() == [1.0, 2.0, 3.0]
    z = normalize(x, "zscore")
    s = math.sqrt(2 / 3)  # population std of 1,2,3
    assert z[:3] == pytest.approx([-1 / s, 0.0, 1 / s])
    assert math.isnan(z[3])
    assert normalize([2.0, 1.0, 2.0], "rank").tolist() == pytest.approx([0.75, 0.0, 0.75])
    assert normalize([0.2, 0.5], "rescale100", (0.0, 1.0)).tolist() == pytest.approx([20.0, 50.0])
    assert normalize([5.0, 5.0], "zscore").tolist() == [0.0, 0.0]
    # equal values whose float std is a rounding residue (1.39e-17 for 0.1 x 3), not 0: still 0, not -1
    assert normalize([0.1, 0.1, 0.1], "zscore").tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="value range"):
        normalize([1.0], "rescale100")
    with pytest.raises(ValueError, match="unknown"):
        normalize([1.0], "softmax")


def test_weighted_sum_agfsync_weights():
    # AGFSync total = 0.35*VQA + 0.55*CLIP + 0.10*aesthetic, each on 0..100
    vqa, clip, aes = np.array([100.0, 50.0]), np.array([30.0, 20.0]), np.array([60.0, 80.0])
    total = weighted_sum([vqa, clip, aes], [0.35, 0.55, 0.10])
    assert total.tolist() == pytest.approx([35 + 16.5 + 6.0, 17.5 + 11.0 + 8.0])
    assert math.isnan(weighted_sum([np.array([1.0, np.nan])], [1.0])[1])
    with pytest.raises(ValueError):
        weighted_sum([vqa], [0.5, 0.5])


def test_best_vs_worst():
    p = best_vs_worst([0.2, 0.9, float("nan"), 0.1])
    assert [(x.chosen, x.rejected) for x in p] == [(1, 3)]
    assert p[0].margin == pytest.approx(0.8)
    assert best_vs_worst([0.5, 0.5]) == []  # tie: no preference
    assert best_vs_worst([0.5, float("nan")]) == []  # fewer than two valid
    assert best_vs_worst([0.1, 0.3], min_margin=0.5) == []
    assert best_vs_worst([0.3, 0.3, 0.1])[0].chosen == 0  # first of tied best


def test_top_k_vs_bottom_k():
    #            idx: 0    1    2    3    4
    scores = [0.5, 0.9, float("nan"), 0.1, 0.7]
    # top 2 = [1 (0.9), 4 (0.7)], bottom 2 = [3 (0.1), 0 (0.5)] -> 4 pairs
    p = top_k_vs_bottom_k(scores, k=2)
    assert [(x.chosen, x.rejected) for x in p] == [(1, 3), (1, 0), (4, 3), (4, 0)]
    assert [x.margin for x in p] == pytest.approx([0.8, 0.4, 0.6, 0.2])
    assert [(x.chosen, x.rejected) for x in top_k_vs_bottom_k(scores, k=2, min_margin=0.5)] == [(1, 3), (4, 3)]
    assert [(x.chosen, x.rejected) for x in top_k_vs_bottom_k(scores, k=1)] == [
        (x.chosen, x.rejected) for x in best_vs_worst(scores)]
    # 3 valid samples, k=2: the middle one is in both top and bottom and pairs with neither itself
    assert [(x.chosen, x.rejected) for x in top_k_vs_bottom_k([0.3, 0.2, 0.1], k=2)] == [(0, 2), (0, 1), (1, 2)]
    assert top_k_vs_bottom_k([0.4, 0.4], k=2) == []  # ties: no preference
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k_vs_bottom_k(scores, k=0)


def test_win_rate_and_wilson():
    r = win_rate([1.0, 2.0, 3.0, 4.0, np.nan], [2.0, 2.0, 1.0, 5.0, 1.0], tie_tolerance=0.0)
    assert (r["wins"], r["ties"], r["losses"], r["n"], r["skipped_nan"]) == (2, 1, 1, 4, 1)
    assert r["win_rate"] == pytest.approx((2 + 0.5) / 4)
    lo, hi = wilson_interval(5, 10)
    # Wilson, p=0.5, n=10, z=1.96: centre 0.5, half = 1.96*sqrt(0.025+0.009604)/1.38416
    half = 1.96 * math.sqrt(0.025 + 1.96**2 / 400) / (1 + 1.96**2 / 10)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))


def test_accuracy_with_wilson_and_nan_skipped():
    r = accuracy([1, 0, 1, 1, float("nan")])
    assert (r["n"], r["correct"], r["accuracy"]) == (4, 3, 0.75)
    assert r["ci95"] == pytest.approx(list(wilson_interval(3, 4)))


def test_paired_difference_hand_values():
    # per-pair differences t - b: [1, 0, 1, -1] -> mean 0.25, sd (ddof 1) = sqrt(((.75^2)*2 + .25^2 + 1.25^2) / 3)
    b = [0, 1, 0, 1, float("nan")]
    t = [1, 1, 1, 0, 1]
    r = paired_difference(b, t)
    sd = math.sqrt((0.75**2 * 2 + 0.25**2 + 1.25**2) / 3)
    assert r["n"] == 4 and r["diff"] == pytest.approx(0.25)
    assert r["ci95"] == pytest.approx([0.25 - 1.96 * sd / 2, 0.25 + 1.96 * sd / 2])
    with pytest.raises(ValueError, match="outcomes"):
        paired_difference([1, 0], [1])


def test_cluster_robust_variance_and_design_effect_hand_values():
    from raypref.metrics import design_effect, mean_variance

    x, prompts = [1, 1, 0, 0, 1, 0], ["a", "a", "b", "b", "c", "c"]
    # independent rows: sample variance / n = (6 x 0.25 / 5) / 6 = 0.05
    assert mean_variance(x) == pytest.approx(0.05)
    # clusters (Liang-Zeger): deviations from 0.5 summed per prompt: a +1, b -1, c 0;
    # G/(G-1) * sum of squares / n^2 = 3/2 * 2 / 36
    assert mean_variance(x, prompts) == pytest.approx(1 / 12)
    assert design_effect(x, prompts) == pytest.approx((1 / 12) / 0.05)
    # prompts whose rows disagree within them: less variance than independence, the effect stays 1
    assert design_effect([1, 0, 1, 0], ["a", "a", "b", "b"]) == 1.0
    # no spread (every image passed), or one cluster: not estimable, so each cluster counts as one row
    assert design_effect([1, 1, 1], ["a", "b", "b"]) == 1.5
    assert math.isnan(mean_variance([1, 0], ["a", "a"])) and design_effect([1, 0], ["a", "a"]) == 2.0
    assert accuracy([1, 1, 1, 1], ["a", "a", "b", "b"])["ci95"] == pytest.approx(list(wilson_interval(2, 2)))


def test_clustered_intervals_widen_by_the_design_effect():
    x, prompts = [1, 1, 0, 0, 1, 0], ["a", "a", "b", "b", "c", "c"]
    deff = (1 / 12) / 0.05
    r = accuracy(x, prompts)  # Kish: Wilson on n / deff = 3.6 rows
    assert r["design_effect"] == pytest.approx(deff)
    assert r["ci95"] == pytest.approx(list(wilson_interval(3 / deff, 6 / deff)))
    assert r["ci95"][1] - r["ci95"][0] > accuracy(x)["ci95"][1] - accuracy(x)["ci95"][0]
    w = win_rate([0.5] * 6, x, clusters=prompts)  # wins where x is 1, losses where 0
    assert w["design_effect"] == pytest.approx(deff) and w["win_rate_ci95"] == pytest.approx(r["ci95"])
    # the paired difference's half-width is 1.96 * sqrt(the clustered variance of the differences)
    d = paired_difference([0] * 6, x, clusters=prompts)
    assert d["ci95"] == pytest.approx([0.5 - 1.96 * math.sqrt(1 / 12), 0.5 + 1.96 * math.sqrt(1 / 12)])
    # every row its own prompt: the intervals are the plain ones
    assert accuracy(x, list("abcdef"))["ci95"] == pytest.approx(accuracy(x)["ci95"])


def test_training_pixels_keep_proportions_short_side_scaled_then_center_cropped():
    from PIL import Image

    from raypref.images import to_tensor

    # three vertical bands, red | green | blue, on a 3:1 canvas: the center crop is the green band
    arr = np.zeros((32, 96, 3), np.uint8)
    arr[:, :32, 0] = arr[:, 32:64, 1] = arr[:, 64:, 2] = 255
    x = to_tensor([Image.fromarray(arr)], size=16)
    assert x.shape == (1, 3, 16, 16)
    torch.testing.assert_close(x[0, :, 1:-1, 1:-1].mean((1, 2)), torch.tensor([-1.0, 1.0, -1.0]), atol=0.02, rtol=0)
    # a tall one: the middle rows; a square one is only resized
    tall = np.zeros((90, 30, 3), np.uint8)
    tall[30:60] = 255
    assert to_tensor([Image.fromarray(tall)], size=30).min() == 1.0
    sq = to_tensor([Image.fromarray(arr[:, :32])], size=8)
    assert sq.shape == (1, 3, 8, 8)
    torch.testing.assert_close(sq[0, 0], torch.ones(8, 8), atol=1e-5, rtol=0)


def test_pretraining_objectives_hand_values():
    from types import SimpleNamespace

    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from raypref.shapes.objectives import ContrastiveCLIP, TextToImageDenoising, VAEReconstruction

    # VAE (Kingma & Welling 2014, Eq. 10): KL(N(mu, 1) || N(0, I)) = 0.5 * sum mu^2 per image: image 0 has
    # mu = (1, 0) -> 0.5, image 1 mu = (2, 0) -> 2; their mean 1.25. Every pixel is 0 and decodes to 0.5:
    # MSE 0.25. Loss with kl_weight 0.2: 0.25 + 0.2 * 1.25 = 0.5
    mean = torch.tensor([[[[1.0, 0.0]]], [[[2.0, 0.0]]]])  # (2, 1, 1, 2)
    posterior = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], dim=1))
    vae = SimpleNamespace(encode=lambda px: SimpleNamespace(latent_dist=posterior),
                          decode=lambda z: SimpleNamespace(sample=torch.full((2, 3, 2, 2), 0.5)))
    assert VAEReconstruction(vae, kl_weight=0.2)(torch.zeros(2, 3, 2, 2)).item() == pytest.approx(0.5)

    # denoising (Ho et al. 2020, Eq. 14): the UNet predicts 0 where the noise is (1, 3): (1 + 9) / 2 = 5
    seen = {}

    def unet(noisy, t, text):
        seen["text"] = text
        return SimpleNamespace(sample=torch.zeros(1, 1, 1, 2))

    obj = TextToImageDenoising(unet, lambda ids: (ids.float() * 10,))
    loss = obj(torch.zeros(1, 1, 1, 2), torch.tensor([3]), torch.tensor([[2]]), torch.tensor([[[[1.0, 3.0]]]]))
    assert loss.item() == pytest.approx(5.0) and seen["text"].tolist() == [[20.0]]  # conditioned on the text

    # CLIP (Radford et al. 2021, Fig. 3) at scale 1: images e1, e2; texts e1, (e1 + e2)/sqrt(2): logits
    # [[1, r], [0, r]]; loss = (CE rows + CE columns) / 2, each CE the mean over the batch
    r = 1 / math.sqrt(2)
    img, txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [r, r]])

    def ce(logits, k):
        return -logits[k] + math.log(sum(math.exp(x) for x in logits))

    want = 0.5 * ((ce([1, r], 0) + ce([0, r], 1)) / 2 + (ce([1, 0], 0) + ce([r, r], 1)) / 2)
    clip = ContrastiveCLIP(lambda images, texts: (img, txt, torch.tensor(1.0)))
    assert clip(None, None).item() == pytest.approx(want, rel=1e-6)
