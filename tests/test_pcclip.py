"""PC-CLIP: the difference losses, the difference texts and comparative prompting on hand values,
then fine-tuning in Ray Train (resume onto 2 workers, the export loading as a CLIP-score scorer)."""

import json
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raypref import schema as S
from raypref.difference_text import resolve, shapes, template
from raypref.losses import difference_alignment_loss
from raypref.train_pcclip import pair_within


def test_difference_losses_hand_values():
    # two pairs; image differences along e1 and e2 (any length: they are normalised), texts along
    # e1 and (e1 + e2)/sqrt(2): s = [[1, r], [0, r]] with r = 1/sqrt(2)
    d = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    u = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    r = 1 / math.sqrt(2)
    # squared: ||d_i - u_i||^2 = 2 - 2 s_ii: (0 + (2 - 2r)) / 2
    sq, m = difference_alignment_loss(d, u, "squared")
    assert sq.item() == pytest.approx(1 - r) and m["retrieval_acc"].item() == 1.0  # row 1: r > 0
    # hinge, margin 0.2: row 0 -> [0.2 - 1 + r]_+ = 0, row 1 -> [0.2 - r + 0]_+ = 0;
    # columns: text 0 vs image 1 -> [0.2 - 1 + 0]_+ = 0, text 1 vs image 0 -> [0.2 - r + r]_+ = 0.2
    hi, _ = difference_alignment_loss(d, u, "hinge", margin=0.2)
    assert hi.item() == pytest.approx(0.2 / 2)
    # contrastive at scale 1: rows CE([1, r], 0), CE([0, r], 1); columns CE([1, 0], 0), CE([r, r], 1)
    def ce(logits, k):
        return -logits[k] + math.log(sum(math.exp(x) for x in logits))
    want = 0.5 * ((ce([1, r], 0) + ce([0, r], 1)) / 2 + (ce([1, 0], 0) + ce([r, r], 1)) / 2)
    co, _ = difference_alignment_loss(d, u, "contrastive", logit_scale=1.0)
    assert co.item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="unknown kind 'cubic'"):
        difference_alignment_loss(d, u, "cubic")


def test_pairs_with_the_same_difference_text_are_not_each_others_negatives():
    # two pairs with one text ("red instead of blue"), image differences at 90 degrees: s = [[r, r], [r, r]]
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    u = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    same = torch.tensor([0, 0])
    # without ids each row's softmax has the other's equal logit: CE([r, r], k) = log 2 both ways
    co, m = difference_alignment_loss(d, u, "contrastive", logit_scale=1.0)
    assert co.item() == pytest.approx(math.log(2)) and m["retrieval_acc"].item() == 0.5
    # with ids the other row is no negative: each softmax holds its positive alone, CE = 0
    co, m = difference_alignment_loss(d, u, "contrastive", logit_scale=1.0, text_ids=same)
    assert co.item() == pytest.approx(0.0, abs=1e-7) and m["retrieval_acc"].item() == 1.0
    # hinge, margin 0.2: without ids 4 hinges of [0.2 - r + r]_+ = 0.2 over 2 rows; with them none
    assert difference_alignment_loss(d, u, "hinge", margin=0.2)[0].item() == pytest.approx(0.4)
    assert difference_alignment_loss(d, u, "hinge", margin=0.2, text_ids=same)[0].item() == 0.0
    # distinct ids change nothing
    other = torch.tensor([0, 1])
    assert difference_alignment_loss(d, u, "hinge", margin=0.2, text_ids=other)[0].item() == pytest.approx(0.4)


def test_difference_texts_say_what_changes():
    assert shapes("a red circle", "a blue circle") == "red instead of blue"
    assert shapes("a red circle", "a blue square") == "red instead of blue, a circle instead of a square"
    assert shapes("three green squares", "two green squares") == "three instead of two"
    assert shapes("a cat", "a dog") == "a cat instead of a dog"  # outside the grammar: the template
    assert shapes("a red circle on the left", "a red circle at the top") == "on the left instead of at the top"
    assert shapes("a red circle left of a blue square", "a red circle above a blue square") == "left of instead of above"
    assert shapes("a red circle", "two red circles") == "a red circle instead of two red circles"  # other templates
    assert shapes("a red circle", "a red circle") is None and template("x", "x") is None
    assert resolve("template") is template and resolve("raypref.difference_text:shapes") is shapes
    with pytest.raises(ValueError, match="neither built in"):
        resolve("nope")
    with pytest.raises(ValueError, match="module 'raypref.difference_text' has no 'nope'"):
        resolve("raypref.difference_text:nope")


def test_pairs_skip_same_prompts_and_are_seeded():
    prompts = ["a", "a", "b", "c"]
    a, b, texts = pair_within(prompts, np.random.default_rng(0), template)
    assert all(prompts[i] != prompts[j] for i, j in zip(a, b))
    assert texts == [f"{prompts[i]} instead of {prompts[j]}" for i, j in zip(a, b)]
    assert (a, b) == pair_within(prompts, np.random.default_rng(0), template)[:2]


def test_comparative_prompting_hand_values():
    from raypref.comparative_prompting import comparative_class_embeddings, nearest_others

    r = 1 / math.sqrt(2)
    # classes along e1, e2 and (e1 + e2)/sqrt(2) (lengths are normalised away); class 1 gets two
    # comparatives: t0 - d with d along (1, -1), and t2 - d' with d' along e2
    text = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    diffs = torch.tensor([[1.0, -1.0], [0.0, 5.0]])
    # estimates: (1 - r, r) and (r, r - 1); their mean (1/2, r - 1/2); at alpha 1/2 the mix is
    # (1/4, 1/2 + (r - 1/2)/2) = (0.25, 0.60355), norm 0.65328 -> (0.38268, 0.92388)
    out = comparative_class_embeddings(text, diffs, [(0, 1), (2, 1)], alpha=0.5)
    assert out[1].tolist() == pytest.approx([0.38268, 0.92388], abs=1e-5)
    assert out[0].tolist() == pytest.approx([1.0, 0.0]) and out[2].tolist() == pytest.approx([r, r])  # no comparative
    # one comparative: (1/2)(0, 1) + (1/2)(1 - r, r) = (0.14645, 0.85355) -> (0.16911, 0.98560)
    one = comparative_class_embeddings(text, diffs[:1], [(0, 1)], alpha=0.5)
    assert one[1].tolist() == pytest.approx([0.16911, 0.98560], abs=1e-5)
    assert torch.allclose(comparative_class_embeddings(text, diffs, [(0, 1), (2, 1)], alpha=1.0),
                          torch.nn.functional.normalize(text, dim=-1))
    with pytest.raises(ValueError, match="2 class pairs for 1 difference texts"):
        comparative_class_embeddings(text, diffs[:1], [(0, 1), (2, 1)], alpha=0.5)
    # nearest by cosine: (1, 0) and (0.9, 0.1) are each other's; (0, 1) is nearer (0.9, 0.1) than (1, 0)
    near = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert nearest_others(near, 1) == [[1], [0], [1]]
    assert nearest_others(near, 5) == [[1, 2], [0, 2], [1, 0]]  # k clamps to the other classes


def test_heldout_eval_comparative_at_alpha_1_is_the_plain_measure(tmp_path, tiny_clip):
    from raypref.difference_text import shapes as shapes_text
    from raypref.train_pcclip import heldout_eval, load_clip

    table = pq.read_table(_render_samples(tmp_path / "s", n_prompts=12, per_prompt=2))
    rows = {c: table.column(c).to_pylist() for c in (S.SAMPLE_ID, S.PROMPT, S.IMAGE)}
    model, preprocess, tokenizer, _ = load_clip(tiny_clip, None)
    c = {"seed": 0, "comparatives_per_class": 3, "comparative_alpha": 1.0}
    plain = heldout_eval(model, preprocess, tokenizer, rows, c, shapes_text, "cpu")
    assert plain["heldout_prompt_retrieval_comparative"] == plain["heldout_prompt_retrieval"]
    off = heldout_eval(model, preprocess, tokenizer, rows, {**c, "comparatives_per_class": 0}, shapes_text, "cpu")
    assert "heldout_prompt_retrieval_comparative" not in off and off["heldout_prompt_retrieval"] == plain["heldout_prompt_retrieval"]
    # one prompt's images make no pair: no difference retrieval to measure, not 0% of it right
    one = {k: v[:2] for k, v in rows.items()}
    none = heldout_eval(model, preprocess, tokenizer, one, c, shapes_text, "cpu")
    assert none["heldout_pairs"] == 0 and math.isnan(none["heldout_diff_retrieval"])
    assert none["heldout_prompt_retrieval"] == 1.0  # one prompt to choose from
    rows[S.IMAGE][5] = b"not an image"  # a bad image names its sample
    with pytest.raises(ValueError, match=r"samples row sample_id='2-1': undecodable image bytes \(12 bytes\)"):
        heldout_eval(model, preprocess, tokenizer, rows, c, shapes_text, "cpu")


def _llm_script(text, attempt, n_images):
    """A chat server standing in for the paper's language model: the difference from the two
    captions, or the failure that the first caption names."""
    from test_llm_judge import chat

    a, b = re.search(r"Image A: (.*)\n", text).group(1), re.search(r"Image B: (.*)\n", text).group(1)
    if "down" in a:
        return 503, {}, b"unavailable", 0.0
    if "empty" in a:
        return 200, {}, chat("  \n  "), 0.0
    if "flaky" in a and attempt == 0:
        return 500, {}, b'{"error": "boom"}', 0.0
    return 200, {}, chat(f'- "{a} rather than {b}"\nBecause the captions say so.'), 0.0


def _llm_conf(base_url, **over) -> dict:
    return {"base_url": base_url, "model": "test-llm", "max_retries": 1, "backoff_s": 0.01, "max_backoff_s": 0.02,
            "timeout_s": 5.0, "connect_timeout_s": 1.0, **over}


def test_llm_difference_texts_from_a_chat_server(monkeypatch, caplog):
    from test_llm_judge import JudgeServer

    from raypref.difference_text import LLMDifferences, close_quietly, resolve

    monkeypatch.setenv("PCCLIP_TEST_KEY", "sekret-123")
    with JudgeServer(_llm_script) as srv:
        gen = resolve("llm", _llm_conf(srv.base_url, api_key_env="PCCLIP_TEST_KEY"))
        rc, bc = "a red circle", "a blue circle"
        texts = gen.many([(rc, bc), ("x", "x"), ("a down", "b"), ("a flaky", "b"), ("an empty", "b"), (rc, bc)])
        # the answer's first line without its list marker and quotes; the same prompts ask nothing;
        # a server that stays down, or an empty answer, leaves the pair without a text
        assert texts == [f"{rc} rather than {bc}", None, None, "a flaky rather than b", None, f"{rc} rather than {bc}"]
        ev = gen.events
        assert (ev["requests"], ev["ok"], ev["failed"], ev["malformed"], ev["http_5xx"]) == (4, 2, 1, 1, 3)
        sent = sum(srv.seen.values())
        assert gen(rc, bc) == f"{rc} rather than {bc}" and sum(srv.seen.values()) == sent  # asked once, then cached
        assert gen.events["cache_hits"] == 1
        swap = next(k for k in range(20) if list(np.random.default_rng(k).permutation(2)) == [1, 0])
        a, b, t = pair_within([rc, bc], np.random.default_rng(swap), gen)  # a permutation that swaps the two
        assert t == [f"{[rc, bc][i]} rather than {[rc, bc][j]}" for i, j in zip(a, b)] and len(t) == 2
        assert set(srv.auth) == {"Bearer sekret-123"}
        # pcclip_loop closes it when the worker's loop ends: threads and connections released, no request after
        adapters = [a for s in gen.client._sessions for a in s.adapters.values()]
        assert sum(len(a.poolmanager.pools) for a in adapters) > 0
        close_quietly(gen)
        assert gen.client._pool._shutdown and all(len(a.poolmanager.pools) == 0 for a in adapters)
        with pytest.raises(RuntimeError, match="is closed"):
            gen.many([("a green cross", "a red cross")])
    assert "sekret-123" not in repr(gen) + caplog.text

    class Broken:
        def close(self):
            raise OSError("socket gone")

    close_quietly(Broken())  # logged, not raised over the loop's own outcome
    assert "pcclip: closing" in caplog.text and "socket gone" in caplog.text
    with pytest.raises(ValueError, match=r"needs both \{a\} and \{b\}"):
        LLMDifferences(gen.client.conf, "How do they differ? {a}")
    with pytest.raises(ValueError, match="needs pcclip.llm"):
        resolve("llm")


def test_llm_generator_config_and_key_fail_before_any_work(tmp_path, monkeypatch):
    from raypref.config import ConfigError, validate
    from raypref.train_pcclip import run_train_pcclip

    base = {"output_dir": str(tmp_path / "run"), "pcclip": {"samples": str(tmp_path / "none"), "text_generator": "llm"}}
    with pytest.raises(ConfigError, match="needs pcclip.llm"):
        validate(base)
    with pytest.raises(ConfigError, match=r"llm_instruction needs both \{a\} and \{b\}"):
        validate({**base, "pcclip": {**base["pcclip"], "llm": _llm_conf("http://127.0.0.1:9/v1"), "llm_instruction": "{a}?"}})
    monkeypatch.delenv("PCCLIP_MISSING_KEY", raising=False)
    cfg = validate({**base, "pcclip": {**base["pcclip"], "llm": _llm_conf("http://127.0.0.1:9/v1", api_key_env="PCCLIP_MISSING_KEY")}})
    with pytest.raises(ValueError, match="PCCLIP_MISSING_KEY is not set"):
        run_train_pcclip(cfg)
    assert not (tmp_path / "run").exists()  # stopped before writing anything


def _render_samples(d, n_prompts=24, per_prompt=4):
    from raypref.images import encode
    from raypref.shapes import parse_prompt
    from raypref.shapes.render import render
    from raypref.shapes.world import prompts

    rows = {S.PROMPT_ID: [], S.PROMPT: [], S.SAMPLE_ID: [], S.IMAGE: []}
    for k, p in enumerate(prompts("train", ["single", "position"])[:n_prompts]):
        for j in range(per_prompt):
            rows[S.PROMPT_ID].append(S.prompt_id(p))
            rows[S.PROMPT].append(p)
            rows[S.SAMPLE_ID].append(f"{k}-{j}")
            rows[S.IMAGE].append(encode(render(parse_prompt(p), seed=j)[0]))
    d.mkdir(parents=True)
    pq.write_table(pa.table(rows), d / "part-0.parquet")
    return d


@pytest.fixture
def llm_server():
    from test_llm_judge import JudgeServer

    with JudgeServer(_llm_script) as srv:
        yield srv


@pytest.mark.slow
def test_pcclip_finetunes_resumes_and_exports_a_clip_scorer(ray_session, tmp_path, tiny_clip, llm_server):
    from raypref import stages
    from raypref.config import validate

    samples = _render_samples(tmp_path / "samples")
    # the hinge loss, and a language model behind a chat server on loopback writing the difference texts
    srv = llm_server
    cfg = {"output_dir": str(tmp_path / "run"),
           "pcclip": {"samples": str(samples), "model": tiny_clip, "pretrained": None, "text_generator": "llm",
                      "llm": _llm_conf(srv.base_url), "loss": "hinge",
                      "learning_rate": 1e-3, "warmup_steps": 0, "batch_size": 16, "max_steps": 4,
                      "checkpoint_every": 2, "heldout_fraction": 0.25, "shuffle_buffer": 64}}
    s = stages.train_pcclip(validate(cfg))
    assert s["final_step"] == 4 and s["images_train"] + s["images_heldout"] == 96 and s["heldout_pairs"] > 0
    # the splits are counted from the prompt ids: every row of a held-out prompt is held out
    from raypref.train_reward import heldout_mask

    ids = pq.read_table(samples, columns=[S.PROMPT_ID]).column(S.PROMPT_ID).to_pylist()
    assert s["images_heldout"] == int(heldout_mask(ids, 0.25, 0).sum()) > 0
    hist = [json.loads(x) for x in (tmp_path / "run" / "pcclip" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [0, 1, 2, 3, 4]  # step 0: the model as it came
    assert all(np.isfinite(h["loss"]) and h["pairs"] >= 2 for h in hist[1:])
    assert [h["step"] for h in hist if "heldout_diff_retrieval" in h] == [0, 2, 4]
    assert s["heldout_diff_retrieval"][0] == hist[0]["heldout_diff_retrieval"]
    comp = [h["heldout_prompt_retrieval_comparative"] for h in hist if "heldout_diff_retrieval" in h]
    assert len(comp) == 3 and all(0 <= x <= 1 for x in comp) and s["heldout_prompt_retrieval_comparative"] == [comp[0], comp[-1]]
    export = tmp_path / "run" / "pcclip" / "model"
    from safetensors.torch import load_file

    base = {k: v for k, v in load_file(str(next((tiny_clip_dir(tiny_clip)).glob("*.safetensors")))).items()}
    tuned = load_file(str(export / "open_clip_model.safetensors"))
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k != "logit_scale")  # it learned
    assert torch.equal(base["logit_scale"], tuned["logit_scale"])  # the temperature is kept

    # the export is a CLIP-score scorer
    from actors.clip_score import CLIPScore
    from raypref.images import decode

    img = decode(pq.read_table(samples).column(S.IMAGE)[0].as_py())
    assert np.isfinite(CLIPScore("c", model="local-dir:" + str(export), floor_at_zero=False).score([img], ["a red circle"])).all()

    # a longer budget resumes at step 4, here on two workers (DDP around the objective), with the
    # training split streamed from the files instead of held in the object store: the same counts
    cfg["pcclip"].update(max_steps=6, num_workers=2, cache_samples_max_mb=0)
    s2 = stages.train_pcclip(validate(cfg))
    assert s2["final_step"] == 6
    assert s["samples_cached"] and not s2["samples_cached"]
    assert (s2["images_train"], s2["images_heldout"]) == (s["images_train"], s["images_heldout"])
    hist2 = [json.loads(x) for x in (tmp_path / "run" / "pcclip" / "metrics.jsonl").read_text().splitlines()]
    assert hist2[:5] == hist and [h["step"] for h in hist2[5:]] == [5, 6]
    assert all(np.isfinite(h["loss"]) for h in hist2[5:])
    # rank 0 asked about its pairs and the held-out ones, and every answer came back
    t = s2["llm_texts"]
    assert t["requests"] == t["ok"] > 0 and t.get("failed", 0) == 0 and hist2[-1]["texts_ok"] == t["ok"]
    assert sum(srv.seen.values()) >= t["requests"]  # the other worker asked too


def tiny_clip_dir(ref):
    from pathlib import Path

    return Path(ref[len("local-dir:"):] if ref.startswith("local-dir:") else ref)


def test_batches_without_two_pairs_are_skipped_and_counted_on_one_worker_only():
    from raypref.train_pcclip import learnable, summary_text

    def make(batch):  # as batch_inputs: None where the batch cannot be learnt from
        return None if batch == "one prompt" else batch.upper()

    batches = ["a", "one prompt", "one prompt", "b", "c", "one prompt"]
    # the count rides with the next batch learnt from, as the step's skipped_batches metric; those after
    # the last come last, to be carried into the next epoch, where they are counted with its first
    assert list(learnable(batches, make, world=1, rank=0)) == [("A", 0), ("B", 2), ("C", 0), (None, 1)]
    assert list(learnable(["one prompt", "d"], make, world=1, rank=0, skipped=1)) == [("D", 2)]
    with pytest.raises(ValueError, match="a batch on rank 1 has fewer than 2 pairs of different prompts"):
        list(learnable(batches, make, world=2, rank=1))  # a skip on one rank would stall the others' all-reduce
    s = {"loss_kind": "hinge", "images_train": 8, "workers": 1, "final_step": 2, "loss": [0.5, 0.4], "loss_mean_of": 2,
         "images_measured": 4, "images_heldout": 4, "heldout_pairs": 2, "heldout_diff_retrieval": [0.5, 0.6],
         "heldout_prompt_retrieval": [0.5, 0.5], "skipped_batches": 3, "seconds": 1.0, "export": "x"}
    assert "; 3 batch(es) with under 2 pairs of different prompts skipped in" in summary_text(s)
    assert "skipped" not in summary_text(s | {"skipped_batches": 0})
    # the loss pair is a mean over the first and the last steps, and says over how many, as the reward line does
    assert "step 2: loss (mean of 2 steps) 0.500 -> 0.400; held-out" in summary_text(s)
    assert "loss (mean of 1 step) " in summary_text(s | {"loss_mean_of": 1})
    assert "loss n/a; held-out" in summary_text(s | {"loss": None})


def test_a_batch_of_one_prompt_has_no_pairs_to_learn_from(tiny_clip):
    from raypref.images import encode
    from raypref.shapes import parse_prompt
    from raypref.shapes.render import render
    from raypref.shapes.world import prompts
    from raypref.train_pcclip import batch_inputs, load_clip

    _, preprocess, tokenizer, _ = load_clip(tiny_clip, None)
    one, other = prompts("train", ["single", "position"])[:2]

    def batch(ps):
        return {S.PROMPT: np.array(ps, dtype=object), S.SAMPLE_ID: np.array([f"s{i}" for i in range(len(ps))], dtype=object),
                S.IMAGE: np.array([encode(render(parse_prompt(p), seed=i)[0]) for i, p in enumerate(ps)], dtype=object)}

    rng = np.random.default_rng(0)
    assert batch_inputs(batch([one] * 4), preprocess, tokenizer, rng, resolve("shapes"), "cpu") is None
    inputs = batch_inputs(batch([one, one, other, other]), preprocess, tokenizer, rng, resolve("shapes"), "cpu")
    assert inputs is not None and len(inputs[2]) >= 2  # pairs of images of different prompts


def test_the_objective_takes_differences_of_normalised_embeddings():
    # image embeddings given directly (pixels are the embeddings): scaling one image's embedding
    # changes the raw difference's direction but not that of the normalised embeddings' difference
    import torch.nn as nn

    from raypref.train_pcclip import objective

    class Stub(nn.Module):
        def __init__(self):
            super().__init__()
            self.logit_scale = nn.Parameter(torch.tensor(0.0))

        def encode_image(self, x):
            return x

        def encode_text(self, tokens):
            return tokens.float()

    obj = objective(Stub(), {"loss": "contrastive", "margin": 0.2, "clip_weight": 0.0})
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    texts = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    a, b, ids = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0, 1])
    args = (texts, a, b, None, None, ids)
    loss, _ = obj(img, *args)
    scaled, _ = obj(img * torch.tensor([[3.0], [1.0], [0.2]]), *args)
    assert scaled.item() == pytest.approx(loss.item(), rel=1e-6)
    # pcclip.logit_scale: None takes the model's exp(logit_scale) (here log 100), 1 the authors' cosine logits
    stub = Stub()
    with torch.no_grad():
        stub.logit_scale.fill_(math.log(100.0))
    diff = torch.nn.functional.normalize(img, dim=-1)
    for scale, want in ((None, 100.0), (1.0, 1.0)):
        got, _ = objective(stub, {"loss": "contrastive", "margin": 0.2, "clip_weight": 0.0, "logit_scale": scale})(img, *args)
        ref, _ = difference_alignment_loss(diff[a] - diff[b], texts, "contrastive", want, 0.2, ids)
        assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_train_towers_text_freezes_the_image_tower(tiny_clip):
    from raypref.train_pcclip import load_clip, trainable

    model = load_clip(tiny_clip, None)[0]
    both = trainable(model, "both")
    assert not model.logit_scale.requires_grad and len(both) == sum(1 for p in model.parameters() if p.requires_grad)
    text = trainable(load_clip(tiny_clip, None)[0], "text")
    assert 0 < len(text) < len(both)
    m = load_clip(tiny_clip, None)[0]
    trainable(m, "text")
    assert not any(p.requires_grad for p in m.visual.parameters())
    assert all(p.requires_grad for n, p in m.named_parameters() if n.startswith("transformer."))
