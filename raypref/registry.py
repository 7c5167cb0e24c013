"""Resolve actor classes named in config: a registry name or a 'module:Class' import path.

Actors are imported here, at pipeline construction, never at module top: a user adds a scorer
by writing one class and naming its import path in a config, without touching raypref.
"""

from __future__ import annotations

import importlib

BUILTIN = {
    # generators
    "diffusers": "actors.generators:DiffusersGenerator",
    "shapes_render": "actors.shapes_render:ShapesRenderGenerator",
    # scorers
    "clip_score": "actors.clip_score:CLIPScore",
    "jpeg_compressibility": "actors.compressibility:JpegCompressibility",
    "shapes_vqa": "actors.shapes_checker:ShapesVQA",
    "shapes_detector": "actors.shapes_checker:ShapesDetector",
    "simulated_judge": "actors.simulated_judge:SimulatedShapesJudge",
    "reward_model": "actors.reward_model:RewardModelScorer",
    "tifa_vqa": "actors.tifa_vqa:TifaVQA",
    "captioner": "actors.captioner:CaptionSimilarity",
    "owlvit": "actors.owlvit:OwlViTDetector",
    "haar_faces": "actors.haar_faces:HaarFaces",
    "llm_judge": "actors.llm_judge:LLMJudge",
    "aesthetic": "actors.aesthetic:AestheticPredictor",
    "pickscore": "actors.pickscore:PickScore",
    "hpsv2": "actors.hpsv2:HPSv2",
    "image_reward": "actors.image_reward:ImageReward",
}


def import_attr(path: str, what: str):
    """'module:name' -> that attribute of the module; a ValueError starting with ``what`` says
    which part is missing. Shared by every plug-in point (actors, rank metrics, difference texts)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what}: {path!r} is not 'module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what}: cannot import module {module_name!r}: {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{what}: module {module_name!r} has no {attr!r}") from None


def resolve(name: str) -> type:
    path = BUILTIN.get(name, name)
    if ":" not in path:  # a dotted path, 'pkg.mod.Class'
        module_name, _, attr = path.rpartition(".")
        path = f"{module_name}:{attr}"
    if path.startswith(":") or path.endswith(":"):
        raise ValueError(f"actor {name!r}: not a registry name ({sorted(BUILTIN)}) nor 'module:Class'")
    return import_attr(path, f"actor {name!r}")
