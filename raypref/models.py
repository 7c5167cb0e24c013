"""Model references: a hub name, a local path, ``tiny:<kind>`` (a random-weight tiny model of
the real architecture, built once into the cache) or ``shapes:<kind>`` (the shapes world's
trained checkpoints shipped inside the package: ``shapes:sd``, ``shapes:clip``). Resolved on the driver, before any actor
spends time loading, so a wrong path fails fast with its name."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_LOCAL_DIR = "local-dir:"
_TINY = "tiny:"
_SHAPES = "shapes:"
SHAPES_WEIGHTS = Path(__file__).parent / "shapes" / "weights"
_SHAPES_KINDS = {"sd": "", "clip": _LOCAL_DIR}  # kind -> the prefix its loader expects


@contextmanager
def quiet_missing_weights():
    """Drop open_clip's "no weights found ... initialized randomly" warnings (it logs on the root
    logger) while building an architecture whose weights the caller loads right after: they
    would mislead. Every other record passes."""
    phrases = ("no CLIP weights found", "No pretrained weights loaded")

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not any(p in record.getMessage() for p in phrases)

    root, drop = logging.getLogger(), _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def open_clip_model(ref: str, pretrained: str | None = None, **kwargs):
    """open_clip.create_model_and_transforms, built with the activation its pretrained weights were
    trained with, and the model config that rebuilds it: (model, preprocess, model_cfg or None).

    open_clip's ViT-L-14 (and other OpenAI) configs use GELU, while the 'openai' weights were
    trained with QuickGELU: open_clip only warns, and the model's embeddings (so the CLIP score and
    the LAION aesthetic score, which reads them) come out wrong. The tag's own config says which it
    was, so QuickGELU is forced where it says so, and recorded in the returned config, so that an
    export of the model rebuilds it the same way."""
    import open_clip

    tag = open_clip.get_pretrained_cfg(ref, pretrained) if pretrained else {}
    if tag.get("quick_gelu"):
        kwargs["force_quick_gelu"] = True
    model, _, preprocess = open_clip.create_model_and_transforms(ref, pretrained=pretrained, **kwargs)
    cfg = open_clip.get_model_config(ref)
    if cfg is not None and kwargs.get("force_quick_gelu"):
        cfg = {**cfg, "quick_gelu": True}
    return model, preprocess, cfg


class ModelNotFound(FileNotFoundError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("RAYPREF_CACHE", Path.home() / ".cache" / "raypref"))


def _tiny_builders():
    from raypref import tiny, tiny_judge, tiny_scorers, tiny_vlm

    return {
        "sd": (tiny.build_tiny_sd, ""),
        "sdxl": (tiny.build_tiny_sdxl, ""),
        "clip": (tiny.build_tiny_open_clip, _LOCAL_DIR),
        "blip_vqa": (tiny_vlm.build_tiny_blip_vqa, ""),
        "blip_caption": (tiny_vlm.build_tiny_blip_caption, ""),
        "blip_itm": (tiny_vlm.build_tiny_blip_itm, ""),  # the reward model's BLIP backbone
        "owlvit": (tiny_vlm.build_tiny_owlvit, ""),
        "aesthetic": (tiny_scorers.build_tiny_aesthetic, _LOCAL_DIR),
        "pickscore": (tiny_scorers.build_tiny_pickscore, ""),
        "hpsv2": (tiny_scorers.build_tiny_hpsv2, _LOCAL_DIR),
        "image_reward": (tiny_scorers.build_tiny_image_reward, ""),
        "llava": (tiny_judge.build_tiny_llava, ""),  # the local LLM judge's vision-language model
    }


def _resolve_tiny(kind: str, what: str) -> str:
    builders = _tiny_builders()
    if kind not in builders:
        raise ModelNotFound(f"{what}: unknown tiny model {kind!r} (known: {sorted(builders)})")
    build, prefix = builders[kind]
    target = cache_dir() / "tiny" / kind
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{kind}-"))
        try:
            build(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            tmp.rename(target)  # atomic: a concurrent builder's copy wins, ours is dropped
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return prefix + str(target)


def resolve_model(ref: str, what: str = "model") -> str:
    """Return a reference the loading library accepts; raise ModelNotFound naming ``what``."""
    if not ref:
        raise ModelNotFound(f"{what}: no model given")
    if ref.startswith(_TINY):
        return _resolve_tiny(ref[len(_TINY):], what)
    if ref.startswith(_SHAPES):
        kind = ref[len(_SHAPES):]
        if kind not in _SHAPES_KINDS:
            raise ModelNotFound(f"{what}: unknown shapes model {kind!r} (known: {sorted(_SHAPES_KINDS)})")
        target = SHAPES_WEIGHTS / kind
        if not target.is_dir():
            raise ModelNotFound(
                f"{what}: the shipped shapes-world checkpoint {target} is missing; rebuild it with "
                f"`raypref pretrain {'t2i' if kind == 'sd' else 'clip'} --config raypref/configs/shapes_pretrain.yaml`"
            )
        return _SHAPES_KINDS[kind] + str(target)
    if ref.startswith("hf-hub:"):
        _check_offline_cache(ref[len("hf-hub:"):], ref, what)
        return ref
    local = ref[len(_LOCAL_DIR):] if ref.startswith(_LOCAL_DIR) else ref
    if Path(local).expanduser().exists():
        # absolute, so that a relative path still resolves in Ray workers, whose cwd differs
        absolute = str(Path(local).expanduser().resolve())
        return _LOCAL_DIR + absolute if ref.startswith(_LOCAL_DIR) else absolute
    if ref.startswith(_LOCAL_DIR) or not _HUB_NAME.match(ref):
        raise ModelNotFound(f"{what}: model path does not exist: {local}")
    _check_offline_cache(ref, ref, what)
    return ref  # a hub name: resolved (and possibly downloaded) by the loading library


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading


def _check_offline_cache(repo: str, ref: str, what: str) -> None:
    """With HF_HUB_OFFLINE set, a hub repo ('org/name') must already be in the local Hugging Face cache:
    else every actor or training worker would fail in turn, each with a long traceback from its loader."""
    if not _offline() or "/" not in repo:  # a bare name may be a loader's own (open_clip's 'ViT-B-32')
        return
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots"
    if not (snapshots.is_dir() and any(snapshots.iterdir())):
        raise ModelNotFound(
            f"{what}: {ref!r} is not a local path, and HF_HUB_OFFLINE is set while the hub repo {repo} is not in the "
            f"Hugging Face cache ({constants.HF_HUB_CACHE}); download it where there is a network "
            f"(`hf download {repo}`) and copy the cache here, or give a local path")


def resolve_pretrained(model: str, pretrained: str | None, what: str) -> str | None:
    """The ``pretrained`` to pass with a resolved open_clip ``model``: a built-in name's tag as given (offline,
    its weights must be cached already), a weights file made absolute (actors' cwd differs); unchanged where
    open_clip ignores it (an 'hf-hub:' or 'local-dir:' model, checked by resolve_model) or there is no tag.
    Checked on the driver, as open_clip would otherwise fail (or download) in every actor in turn."""
    if not pretrained or model.startswith(("hf-hub:", _LOCAL_DIR)) or Path(model).exists():
        return pretrained
    import open_clip

    name = model.replace("/", "-")  # as open_clip looks a built-in name up
    if open_clip.get_model_config(name) is None:
        return pretrained  # not an open_clip built-in: the scorer's own loader reads it
    tag = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag:  # open_clip tries a known tag before a file path
        if Path(pretrained).expanduser().is_file():
            return absolute_if_file(pretrained)
        raise ModelNotFound(f"{what}: {pretrained!r} is neither a pretrained tag of open_clip's {name} "
                            f"(tags: {open_clip.list_pretrained_tags_by_model(name)}) nor a weights file")
    if _offline() and not _open_clip_cached(tag):
        raise ModelNotFound(
            f"{what}: HF_HUB_OFFLINE is set while the weights of open_clip {name} pretrained={pretrained!r} are not "
            f"in the local cache; {_open_clip_fetch(tag)} where there is a network and copy them here, or give a "
            f"local weights file as pretrained")
    return pretrained


def absolute_if_file(path: str | None) -> str | None:
    """``path`` made absolute where it names a file here (actors' and workers' cwd differs), else as given."""
    if path and Path(path).expanduser().is_file():
        return str(Path(path).expanduser().resolve())
    return path


def _open_clip_fetch(tag: dict) -> str:
    """How to fetch a tag's weights to where open_clip.pretrained.download_pretrained looks: a file the tag
    names, else its Hugging Face repo (preferred, as huggingface_hub is installed), else its URL, cached
    under ~/.cache/clip."""
    if tag.get("file"):
        return f"put {tag['file']} in place"
    if tag.get("hf_hub"):
        from huggingface_hub import constants

        return f"download the hub repo (`hf download {os.path.split(tag['hf_hub'])[0]}`) into {constants.HF_HUB_CACHE}"
    return f"download {tag.get('url')} into {os.path.expanduser('~/.cache/clip')}"


def _open_clip_cached(tag: dict) -> bool:
    """Whether the file open_clip.pretrained.download_pretrained would return for a tag is on disk, found the
    way it looks for it (a .safetensors twin first on the hub), without any request."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.pretrained import _get_safe_alternatives
    from open_clip.constants import HF_WEIGHTS_NAME

    if tag.get("file"):
        return Path(tag["file"]).is_file()
    if tag.get("hf_hub"):
        repo, filename = os.path.split(tag["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        return any(isinstance(try_to_load_from_cache(repo, f), str)
                   for f in [*_get_safe_alternatives(filename), filename])
    url = tag.get("url", "")
    return bool(url) and Path(os.path.expanduser("~/.cache/clip"), os.path.basename(url)).is_file()


def check_file_args(where: str, args: dict, files: tuple[str, ...] = (), refs: tuple[str, ...] = ()) -> dict:
    """A scorer's check_files for the paths in its ``args``: each of ``files`` given must be a file here, each of
    ``refs`` a model reference resolve_model accepts (a path, or a hub name). On the driver, before Ray starts,
    so that a typo stops the run with its key rather than failing in every actor in turn. Returns ``args`` with
    those paths made absolute, as ``model`` is: an actor's cwd is not the driver's on another node."""
    args = dict(args)
    for key in files:
        if args.get(key) is not None:
            if not Path(str(args[key])).expanduser().is_file():
                raise FileNotFoundError(f"{where}: args.{key}: file does not exist: {args[key]}")
            args[key] = absolute_if_file(str(args[key]))
    for key in refs:
        if args.get(key) is not None:
            args[key] = resolve_model(str(args[key]), what=f"{where}: args.{key}")
    return args


def check_model_ref(ref: str, what: str = "model") -> str:
    """In actors: the driver already resolved the ref; fail clearly if it still does not exist."""
    return resolve_model(ref, what)
