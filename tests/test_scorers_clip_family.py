"""The scorer zoo (aesthetic, PickScore, HPSv2, ImageReward) on tiny random checkpoints written in each
real format (raypref.tiny_scorers, via the tiny: refs) and loaded by path through the actors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from raypref import images as I
from raypref import schema as S
from raypref.models import resolve_model
from raypref.registry import resolve
from raypref.shapes import parse_prompt, render

PROMPTS = ["a red circle", "a green triangle", "a blue square"]
LOCAL = "local-dir:"


@pytest.fixture(scope="module")
def images():
    return [render(parse_prompt(p), seed=3)[0] for p in PROMPTS]


@pytest.fixture(scope="module")
def refs():
    return {kind: resolve_model(f"tiny:{kind}") for kind in ("aesthetic", "pickscore", "hpsv2", "image_reward")}


@pytest.fixture(scope="module")
def scorers(refs):
    # the actors take the tiny: ref itself (resolved to the same directory as in `refs`)
    return {kind: resolve(kind)(name=kind, model=f"tiny:{kind}") for kind in refs}


def _dir(ref: str) -> Path:
    return Path(ref[len(LOCAL):] if ref.startswith(LOCAL) else ref)


def _check_basic(scorer, images, prompt_dependent: bool) -> np.ndarray:
    s = scorer.score(images, PROMPTS)
    assert s.dtype == np.float32 and s.shape == (len(images),)
    assert np.isfinite(s).all()
    np.testing.assert_array_equal(s, scorer.score(images, PROMPTS))  # deterministic
    assert len(np.unique(s)) == len(images)  # different images, different scores
    same_image_other_prompts = scorer.score([images[0]] * 3, PROMPTS)
    if prompt_dependent:
        assert len(np.unique(same_image_other_prompts)) == 3
    else:
        np.testing.assert_allclose(same_image_other_prompts, s[0], rtol=1e-5)
    return s


def _head(state: dict, x: torch.Tensor, prefix: str = "") -> torch.Tensor:
    for idx in (0, 2, 4, 6, 7):  # the published head: linear layers only, no activations
        x = F.linear(x, state[f"{prefix}layers.{idx}.weight"], state[f"{prefix}layers.{idx}.bias"])
    return x.squeeze(-1)


def test_aesthetic_equals_head_on_saved_tensors(scorers, refs, images, tiny_clip):
    import open_clip
    from safetensors.torch import load_file

    s = _check_basic(scorers["aesthetic"], images, prompt_dependent=False)
    model, _, pre = open_clip.create_model_and_transforms(refs["aesthetic"])
    with torch.no_grad():
        emb = F.normalize(model.eval().encode_image(torch.stack([pre(im) for im in images])), dim=-1)
        expected = _head(load_file(str(_dir(refs["aesthetic"]) / "aesthetic_head.safetensors")), emb)
    np.testing.assert_allclose(s, expected.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pass head="):
        resolve("aesthetic")(name="a", model=tiny_clip)  # an open_clip dir with no head beside it


def test_pickscore_uses_saved_logit_scale_and_projections(scorers, refs, images, tmp_path):
    from safetensors.torch import load_file, save_file

    s = _check_basic(scorers["pickscore"], images, prompt_dependent=True)
    state = load_file(str(Path(refs["pickscore"]) / "model.safetensors"))
    old_scale = float(state["logit_scale"].exp())
    state["logit_scale"] = torch.tensor(np.log(7.0), dtype=torch.float32)
    state["visual_projection.weight"] = 2 * state["visual_projection.weight"]  # cosine is scale-invariant
    edited = tmp_path / "edited"
    shutil.copytree(refs["pickscore"], edited)
    save_file(state, str(edited / "model.safetensors"))
    rescaled = resolve("pickscore")(name="p", model=str(edited), processor=refs["pickscore"]).score(images, PROMPTS)
    np.testing.assert_allclose(rescaled, s * 7.0 / old_scale, rtol=1e-4, atol=1e-5)
    noise = torch.randn(state["text_projection.weight"].shape, generator=torch.Generator().manual_seed(0))
    state["text_projection.weight"] = state["text_projection.weight"] + 0.5 * noise
    save_file(state, str(edited / "model.safetensors"))
    moved = resolve("pickscore")(name="p", model=str(edited)).score(images, PROMPTS)
    assert np.abs(moved - rescaled).max() > 1e-3


def test_hpsv2_equals_cosine_from_state_dict(scorers, refs, images, tmp_path):
    import open_clip
    from safetensors.torch import save_file

    s = _check_basic(scorers["hpsv2"], images, prompt_dependent=True)
    folder = _dir(refs["hpsv2"])
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    state = torch.load(folder / "HPS_v2.1_compressed.pt", weights_only=True)["state_dict"]
    model = open_clip.CLIP(**cfg["model_cfg"]).eval()
    model.load_state_dict(state)
    # HPSv2's eval transform: resize the longest side, pad to square (differs from crop on a wide image)
    pre = open_clip.image_transform(cfg["model_cfg"]["vision_cfg"]["image_size"], is_train=False, resize_mode="longest")
    tok = open_clip.get_tokenizer(refs["hpsv2"])
    wide = images[0].resize((48, 24))
    with torch.no_grad():
        img = F.normalize(model.encode_image(torch.stack([pre(im) for im in [*images, wide]])), dim=-1)
        txt = F.normalize(model.encode_text(tok([*PROMPTS, PROMPTS[0]])), dim=-1)
    expected = (img * txt).sum(-1).numpy()
    np.testing.assert_allclose(s, expected[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scorers["hpsv2"].score([wide], PROMPTS[:1]), expected[3:], rtol=1e-5, atol=1e-6)
    # the same weights as a bare safetensors state dict, and the .pt passed as `pretrained`
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "hps.safetensors"))
    hps = resolve("hpsv2")
    np.testing.assert_allclose(hps(model=refs["hpsv2"], checkpoint=str(tmp_path / "hps.safetensors")).score(images, PROMPTS), s, rtol=1e-6)
    np.testing.assert_allclose(hps(model=refs["hpsv2"], pretrained=str(folder / "HPS_v2.1_compressed.pt")).score(images, PROMPTS), s, rtol=1e-6)
    with pytest.raises(ValueError, match="not a file"):
        hps(model=refs["hpsv2"], pretrained="laion2B-s32B-b79K")


def _blip_reference(state: dict, med: dict, pix: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ImageReward's forward written out from BLIP's ViT / med.py BERT on the raw checkpoint tensors."""
    def lin(x, k):
        return F.linear(x, state[k + ".weight"], state[k + ".bias"])

    def ln(x, k, eps):
        return F.layer_norm(x, x.shape[-1:], state[k + ".weight"], state[k + ".bias"], eps)

    def attend(q, k, v, heads, bias=None):
        def split(t):
            return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)
        return F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias).transpose(1, 2).flatten(2)

    v = "blip.visual_encoder."
    w = state[v + "patch_embed.proj.weight"]
    x = F.conv2d(pix, w, state[v + "patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([state[v + "cls_token"].expand(len(x), -1, -1), x], 1) + state[v + "pos_embed"]
    i = 0
    while f"{v}blocks.{i}.norm1.weight" in state:
        b = f"{v}blocks.{i}."
        q, k, vv = lin(ln(x, b + "norm1", 1e-6), b + "attn.qkv").chunk(3, dim=-1)
        x = x + lin(attend(q, k, vv, x.shape[-1] // 64), b + "attn.proj")
        x = x + lin(F.gelu(lin(ln(x, b + "norm2", 1e-6), b + "mlp.fc1")), b + "mlp.fc2")
        i += 1
    img = ln(x, v + "norm", 1e-6)

    t, eps, heads = "blip.text_encoder.", med["layer_norm_eps"], med["num_attention_heads"]
    y = state[t + "embeddings.word_embeddings.weight"][ids] + state[t + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    y = ln(y, t + "embeddings.LayerNorm", eps)
    pad = (1.0 - mask[:, None, None, :].float()) * -10000.0  # BLIP's extended attention mask
    for i in range(med["num_hidden_layers"]):
        a, c, b = f"{t}encoder.layer.{i}.attention.", f"{t}encoder.layer.{i}.crossattention.", f"{t}encoder.layer.{i}."
        y = ln(lin(attend(lin(y, a + "self.query"), lin(y, a + "self.key"), lin(y, a + "self.value"), heads, pad),
                   a + "output.dense") + y, a + "output.LayerNorm", eps)
        y = ln(lin(attend(lin(y, c + "self.query"), lin(img, c + "self.key"), lin(img, c + "self.value"), heads),
                   c + "output.dense") + y, c + "output.LayerNorm", eps)
        y = ln(lin(F.gelu(lin(y, b + "intermediate.dense")), b + "output.dense") + y, b + "output.LayerNorm", eps)
    return (_head(state, y[:, 0], "mlp.") - 0.16717362830052426) / 1.0333394966054072


def test_image_reward_equals_blip_forward_on_saved_tensors(scorers, refs, images, tmp_path):
    import open_clip
    from transformers import AutoTokenizer

    from actors.image_reward import split_state

    s = _check_basic(scorers["image_reward"], images, prompt_dependent=True)
    folder = Path(refs["image_reward"])
    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    med = json.loads((folder / "med_config.json").read_text())
    parts = split_state(state)
    assert sum(len(p) for p in parts.values()) == len(state)  # every key is mapped or knowingly dropped
    dropped = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")
    assert set(parts["dropped"]) == {k for k in state if k.startswith(dropped)}
    grid = round((state["blip.visual_encoder.pos_embed"].shape[1] - 1) ** 0.5)
    size = grid * state["blip.visual_encoder.patch_embed.proj.weight"].shape[-1]
    pix = torch.stack([open_clip.image_transform(size, is_train=False)(im) for im in images])
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")(PROMPTS, padding="max_length", truncation=True,
                                                             max_length=35, return_tensors="pt")
    with torch.no_grad():
        expected = _blip_reference(state, med, pix, tok["input_ids"], tok["attention_mask"])
    np.testing.assert_allclose(s, expected.numpy(), rtol=1e-4, atol=1e-4)

    # the checkpoint given as a file (med_config beside it); a missing tensor is named in the error
    np.testing.assert_allclose(resolve("image_reward")(model=str(folder / "ImageReward.pt")).score(images, PROMPTS), s, rtol=1e-6)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    del state["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"]
    torch.save(state, broken / "ImageReward.pt")
    with pytest.raises(ValueError, match="crossattention.self.key.weight"):
        resolve("image_reward")(model=str(broken))


def test_scorer_call_fills_group_lists(scorers, images):
    groups = pa.table({
        S.PROMPT_ID: [S.prompt_id(p) for p in PROMPTS[:2]],
        S.PROMPT: PROMPTS[:2],
        S.SAMPLE_ID: [["s0", "s1", "s2"], ["s3", "s4"]],
        S.IMAGE: [[I.encode(im) for im in images], [I.encode(images[1]), I.encode(images[0])]],
    })
    for kind, scorer in scorers.items():
        out = scorer(groups)
        col = S.score_column(kind)
        assert out.schema.field(col).type == pa.list_(pa.float32())
        got = out.column(col).to_pylist()
        assert [len(v) for v in got] == [3, 2]
        flat = scorer.score([I.decode(b) for b in sum(groups.column(S.IMAGE).to_pylist(), [])],
                            [PROMPTS[0]] * 3 + [PROMPTS[1]] * 2)
        np.testing.assert_allclose(got[0] + got[1], flat, rtol=1e-6, err_msg=kind)


SCORERS_YAML = """
- {name: aesthetic, cls: aesthetic, model: "tiny:aesthetic", normalize: zscore}
- {name: pickscore, cls: pickscore, model: "tiny:pickscore", normalize: zscore}
- {name: hpsv2, cls: hpsv2, model: "tiny:hpsv2", normalize: zscore}
- {name: image_reward, cls: image_reward, model: "tiny:image_reward", normalize: zscore}
"""


def test_scorer_configs_build_the_actors(scorers, images):
    """What the build pipeline does per scorer pool: typed config -> constructor kwargs -> actor."""
    import yaml

    from raypref.build import scorer_kwargs
    from raypref.config import ScorerConf

    for entry in yaml.safe_load(SCORERS_YAML):
        conf = ScorerConf(**entry)
        actor = resolve(conf.cls)(**scorer_kwargs(conf))
        np.testing.assert_array_equal(actor.score(images, PROMPTS), scorers[conf.name].score(images, PROMPTS))



@pytest.mark.parametrize("cls,key", [("aesthetic", "head"), ("hpsv2", "checkpoint"), ("image_reward", "med_config"),
                                     ("image_reward", "tokenizer"), ("pickscore", "processor")])
def test_a_missing_file_in_args_stops_the_driver_naming_scorer_and_key(cls, key, tmp_path, monkeypatch):
    """The driver's scorer_kwargs (before Ray starts) refuses a file arg that does not exist, so it
    does not fail only later, in every actor."""
    from raypref.build import scorer_kwargs
    from raypref.config import ScorerConf

    conf = ScorerConf(name="s", cls=cls, args={key: str(tmp_path / "nope.pt")})
    with pytest.raises(FileNotFoundError, match=rf"scorer 's'.*args\.{key}.*nope\.pt"):
        scorer_kwargs(conf)
    (tmp_path / "nope.pt").write_bytes(b"")  # there now: the driver lets it through, the actor reads it
    assert scorer_kwargs(conf)[key] == str(tmp_path / "nope.pt")
    # given relative, it reaches the actors absolute: on another node their cwd is not the driver's
    monkeypatch.chdir(tmp_path)
    assert scorer_kwargs(conf.model_copy(update={"args": {key: "nope.pt"}}))[key] == str((tmp_path / "nope.pt").resolve())

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_scorers_on_gpu_match_cpu(scorers, images):
    for kind, cpu in scorers.items():
        gpu = resolve(kind)(name=kind, model=f"tiny:{kind}", num_gpus=1)
        assert gpu.device == "cuda"
        # cuDNN may run the patch-embedding convolutions in TF32, hence the loose tolerance
        np.testing.assert_allclose(gpu.score(images, PROMPTS), cpu.score(images, PROMPTS), rtol=5e-3, atol=5e-3, err_msg=kind)


def test_openai_clip_weights_get_the_quickgelu_they_were_trained_with(monkeypatch):
    # open_clip's ViT-L-14 config says GELU, its 'openai' weights were trained with QuickGELU (and
    # open_clip only warns): the CLIP score and aesthetic actors must build it with QuickGELU. No hub
    # here, so what open_clip is asked to build is recorded instead of downloaded.
    import open_clip

    from actors.aesthetic import AestheticPredictor
    from actors.clip_score import CLIPScore
    from raypref.models import open_clip_model

    asked = []

    def record(ref, pretrained=None, **kw):
        asked.append((ref, pretrained, kw.get("force_quick_gelu", False)))
        raise RuntimeError("recorded")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", record)
    for ref, tag in (("ViT-L-14", "openai"), ("ViT-L-14", "laion2b_s32b_b82k"), ("ViT-B-32", None)):
        with pytest.raises(RuntimeError, match="recorded"):
            open_clip_model(ref, tag)
    with pytest.raises(RuntimeError, match="recorded"):
        CLIPScore("c", model="ViT-L-14", pretrained="openai")
    with pytest.raises(RuntimeError, match="recorded"):
        AestheticPredictor("a", model="ViT-L-14", pretrained="openai", head=__file__)
    assert asked == [("ViT-L-14", "openai", True), ("ViT-L-14", "laion2b_s32b_b82k", False), ("ViT-B-32", None, False),
                     ("ViT-L-14", "openai", True), ("ViT-L-14", "openai", True)]

    # and the config an export saves rebuilds it with QuickGELU
    monkeypatch.setattr(open_clip, "create_model_and_transforms", lambda ref, pretrained=None, **kw: ("m", None, "p"))
    assert open_clip_model("ViT-L-14", "openai")[2]["quick_gelu"] is True
    assert "quick_gelu" not in open_clip_model("ViT-L-14", "laion2b_s32b_b82k")[2]


def test_hpsv2_takes_its_checkpoint_from_one_key(tmp_path):
    """args.checkpoint, or a checkpoint file as pretrained; both at once would drop one without a word, and
    a pretrained tag is no checkpoint."""
    from actors.hpsv2 import _checkpoint

    f = tmp_path / "HPS_v2.1_compressed.pt"
    f.write_bytes(b"")
    assert _checkpoint("scorer 'h'", "ViT-H-14", None, str(f)) == str(f)
    assert _checkpoint("scorer 'h'", "ViT-H-14", str(f), None) == str(f)
    assert _checkpoint("scorer 'h'", f"local-dir:{tmp_path}", None, None) == str(f)
    with pytest.raises(ValueError, match=r"^scorer 'h': both pretrained='laion2b_s32b_b79k' and args.checkpoint"):
        _checkpoint("scorer 'h'", "ViT-H-14", "laion2b_s32b_b79k", str(f))
    with pytest.raises(ValueError, match=r"pretrained='laion2b_s32b_b79k' is not a file"):
        _checkpoint("scorer 'h'", "ViT-H-14", "laion2b_s32b_b79k", None)
    # the same refusals on the driver, before Ray starts (build.scorer_kwargs), not in every actor
    from raypref.build import scorer_kwargs
    from raypref.config import ScorerConf

    with pytest.raises(ValueError, match=r"^scorer 'h': pretrained=.*compresed.pt' is not a file"):
        scorer_kwargs(ScorerConf(name="h", cls="hpsv2", model="ViT-H-14", pretrained=str(tmp_path / "HPS_v2.1_compresed.pt")))
    with pytest.raises(ValueError, match=r"^scorer 'h': both pretrained="):
        scorer_kwargs(ScorerConf(name="h", cls="hpsv2", model="ViT-H-14", pretrained=str(f), args={"checkpoint": str(f)}))
    assert scorer_kwargs(ScorerConf(name="h", cls="hpsv2", model="ViT-H-14", pretrained=str(f)))["pretrained"] == str(f)
