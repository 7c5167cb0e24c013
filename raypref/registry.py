"""Resolve actor classes named in config: a registry name or a 'module:Class' import path.

Actors are imported here, at pipeline construction, never at module top: a user adds a scorer
by writing one class and naming its import path in a config, without touching raypref.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import reprlib
import types
import typing

GENERATORS = {
    "diffusers": "actors.generators:DiffusersGenerator",
    "shapes_render": "actors.shapes_render:ShapesRenderGenerator",
}
SCORERS = {
    "clip_score": "actors.clip_score:CLIPScore",
    "jpeg_compressibility": "actors.compressibility:JpegCompressibility",
    "shapes_vqa": "actors.shapes_checker:ShapesVQA",
    "shapes_detector": "actors.shapes_checker:ShapesDetector",
    "simulated_judge": "actors.simulated_judge:SimulatedShapesJudge",
    "reward_model": "actors.reward_model:RewardModelScorer",
    "tifa_vqa": "actors.tifa_vqa:TifaVQA",
    "vqascore": "actors.vqascore:VQAScore",
    "captioner": "actors.captioner:CaptionSimilarity",
    "owlvit": "actors.owlvit:OwlViTDetector",
    "haar_faces": "actors.haar_faces:HaarFaces",
    "llm_judge": "actors.llm_judge:LLMJudge",
    "aesthetic": "actors.aesthetic:AestheticPredictor",
    "pickscore": "actors.pickscore:PickScore",
    "hpsv2": "actors.hpsv2:HPSv2",
    "image_reward": "actors.image_reward:ImageReward",
}
BUILTIN = {**GENERATORS, **SCORERS}
# the built-ins whose class checks its own args (check_args): the others need no import to know they do not
CHECK_ARGS = frozenset({"llm_judge"})


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


def resolve(name: str, kind: str | None = None, what: str | None = None) -> type:
    """The actor class ``name`` names. With ``kind`` ('generator' or 'scorer') it must not be of the other
    kind: a built-in generator is no scorer, a raypref.scoring.Scorer subclass no generator (a class of
    one's own that is neither passes). ``what`` names the config entry."""
    names = {"generator": GENERATORS, "scorer": SCORERS}.get(kind, BUILTIN)
    what = what or f"actor {name!r}"
    path = BUILTIN.get(name, name)
    if ":" not in path:  # a dotted path, 'pkg.mod.Class'
        module_name, _, attr = path.rpartition(".")
        path = f"{module_name}:{attr}"
    if path.startswith(":") or path.endswith(":"):
        raise ValueError(f"{what}: {name!r} is not a {kind or 'registry'} name ({', '.join(sorted(names))}) nor 'module:Class'")
    cls = import_attr(path, what)
    if kind is not None:
        from raypref.scoring import Scorer

        is_scorer = isinstance(cls, type) and issubclass(cls, Scorer)
        wrong = is_scorer if kind == "generator" else path in GENERATORS.values()
        if wrong:
            other = "scorer" if kind == "generator" else "generator"
            raise ValueError(f"{what}: {name!r} ({path}) is a {other}, not a {kind}; {kind}s: {', '.join(sorted(names))}, "
                             "or 'module:Class'")
    return cls


def _type_text(t) -> str:
    """A type as a config's reader writes it: constraints (Annotated) left to the error's own words."""
    origin, targs = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:
        return _type_text(targs[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in targs)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in targs)
    if origin is not None and targs:
        return f"{_type_text(origin)}[{', '.join(_type_text(a) for a in targs)}]"
    if t is type(None):
        return "None"
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


_KINDS = {type(None): "null", bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list",
          dict: "a mapping"}


def _kind(value) -> str:
    """What a YAML value is, in the config's words; not the value, which may be long or private."""
    return _KINDS.get(type(value), f"a {type(value).__name__}")


# pydantic's JSON-mode words for a container ("a valid array", "an object") in YAML's, the config's: a tuple
# or set arg is written as a list
_YAML_WORDS = {"list_type": "a list", "tuple_type": "a list", "set_type": "a list", "frozen_set_type": "a list",
               "dict_type": "a mapping"}


def _message(err: dict) -> str:
    word = _YAML_WORDS.get(err["type"])
    return f"Input should be {word}" if word else err["msg"]


def _is_type_error(err: dict) -> bool:
    """A pydantic error about the value's kind (a string for an int), not about a value of the right kind
    (an int out of range, a string not among the choices)."""
    return err["type"].endswith("_type") or err["type"] in ("none_required", "is_instance_of")


def _hints(fn) -> dict | None:
    try:
        return typing.get_type_hints(fn, include_extras=True)  # extras: the Annotated constraints
    except Exception:  # an annotation naming what its module does not import at run time
        return None


_YAML11_FLOAT = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+))[eE]([-+]?\d+)")


def _yaml11_hint(errors: list[dict]) -> str:
    """PyYAML reads YAML 1.1, where an exponent needs a dot before it and a sign (``1.0e-1``): ``1e-1`` is text.
    Where that text stands for a float the annotation takes, the fix, to end the error's parenthesis; else ''."""
    for err in errors:
        text = err["input"]
        if err["type"] == "float_type" and isinstance(text, str) and (m := _YAML11_FLOAT.fullmatch(text)):
            mantissa, exponent = m.groups()
            mantissa = re.sub(r"^([-+]?)\.", r"\g<1>0.", mantissa if "." in mantissa else mantissa + ".0")
            exponent = exponent if exponent[0] in "+-" else "+" + exponent
            return f"; YAML 1.1 reads {text} as text: write {mantissa}e{exponent} or {float(text)!r}"
    return ""


def _value_path(value, loc: tuple) -> str:
    """The part of a pydantic error's loc that indexes into ``value`` ('.1', '.key'): a union's loc also holds the
    member tried ('str', 'int', "literal['auto']"), which is no place in the value."""
    path = ""
    for part in loc:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            continue
        path += f".{part}"
    return path


def _validate(adapter, value) -> None:
    """Strict, on the value as JSON, YAML's data model: a list is a tuple[int, int] or a set, a string a Path or
    an Enum's value, an int a float; a quoted "77" is still no int, nor 2.0 an int or 1 a bool. A value JSON cannot
    hold (a tensor or an object given to an actor built directly) came from no config: it is left to the class,
    as before these checks (strict Python mode would refuse a Path for a str; lax mode would coerce, not check)."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return
    adapter.validate_json(text, strict=True)


def check_arg_types(cls, args: dict, where: str, prefix: str = "args.", keys: dict[str, str] | None = None) -> None:
    """Each of ``args`` that ``cls.__init__`` (or the function ``cls``) annotates holds that type, and any
    constraint the annotation declares (``Annotated[int, Field(ge=1)]``, ``Literal[...]``): pydantic, strict, on the
    value as JSON (_validate), so a YAML "77" is no int, and a bad value fails here naming its key rather than inside
    the actor, under Ray. The error names a key as ``keys[key]`` where given (the config key that set it), else
    ``prefix + key``. A parameter whose annotation cannot be read (a class of one's own may name a type pydantic
    does not know) is left to the class."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    hints = _hints(cls.__init__ if isinstance(cls, type) else cls)
    if hints is None:
        return
    for key, value in args.items():
        if key not in hints:
            continue
        try:
            adapter = TypeAdapter(hints[key], config=ConfigDict(strict=True))
        except Exception:  # not a type pydantic can check
            continue
        try:
            _validate(adapter, value)
        except ValidationError as e:
            errors = e.errors()
            # of a union's errors, the one that reaches deepest into the value: ['a', 3] for str | list[str] is
            # a list with a bad item, not a bad string
            err = max(errors, key=lambda err: len(_value_path(value, err["loc"])))
            name, at = (keys or {}).get(key, prefix + key), _value_path(value, err["loc"])
            if _is_type_error(err):
                raise ValueError(f"{where}: {name}{at}: {_message(err)}, not {_kind(err['input'])} "
                                 f"({name} takes {_type_text(hints[key])}{_yaml11_hint(errors)})") from None
            # a number, or a choice misspelt, is worth seeing; other text may be long or private
            shown = isinstance(err["input"], (int, float)) or err["type"] in ("literal_error", "enum")
            got = f", got {reprlib.repr(err['input'])}" if shown else ""
            raise ValueError(f"{where}: {name}{at}: {err['msg']}{got}") from None


def checked_args(kind: str):
    """Decorates an actor's ``__init__``: the arguments it is given are checked against its annotations
    (check_arg_types), as the driver checks a config's before Ray, so a constraint declared there holds
    also for an actor built directly. ``kind`` ('scorer', 'generator') and the ``name`` argument name it; each
    argument is named as the parameter it is (``quality``), not as a config key: here there may be no config,
    and under Ray the build's settings and the config's args arrive as one set of keyword arguments."""
    def wrap(init):
        sig = inspect.signature(init)

        @functools.wraps(init)
        def checked(self, *a, **kw):
            bound = sig.bind(self, *a, **kw).arguments
            name = bound.get("name", sig.parameters["name"].default if "name" in sig.parameters else type(self).__name__)
            check_arg_types(init, {k: v for k, v in bound.items() if k != "self"}, f"{kind} {name!r}", prefix="")
            init(self, *a, **kw)
        return checked
    return wrap


def constructor_kwargs(cls: type, given: dict, args: dict, where: str, keys: dict[str, str] | None = None) -> dict:
    """Keyword arguments to build ``cls`` with.

    ``given`` are the settings the build hands every actor of its kind (name, model, num_gpus...):
    each goes in only if ``cls.__init__`` names it, so a class takes just what it uses, and is checked against
    its annotation as args are, named by its config key: ``keys[key]`` where the build gives one
    (num_gpus: pool.num_gpus), else the key itself (width). ``args`` are
    the config's own arguments for this actor: each must be a parameter of ``cls.__init__``, or a
    misspelt one would be silently ignored; a class with ``**kwargs`` takes them all and checks them
    itself, in its ``check_args(where, args)`` classmethod if it has one (called here); a ``check_files(where,
    args)`` classmethod checks that the files its args name exist, and returns the args with them made
    absolute (called here too). ``where``
    names the config entry in the error.
    """
    params = inspect.signature(cls.__init__).parameters.values()
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    # an arg named as a build setting would replace it in the actor while the run's record kept the setting;
    # checked first, so that a class that does not take the setting still points to where it is set
    shadowed = [k for k in args if k in given]
    if shadowed:
        k = shadowed[0]
        raise ValueError(f"{where}: args.{k}: {k} is a setting of the config entry itself, not an extra argument; "
                         f"set {(keys or {}).get(k, k)} there instead")
    unknown = [k for k in args if k not in named]
    if unknown and not takes_any:
        own = sorted(named - set(given)) or ["none"]
        raise ValueError(f"{where}: args.{unknown[0]}: {cls.__module__}:{cls.__qualname__} takes no argument "
                         f"{unknown[0]!r}; its arguments: {', '.join(own)}")
    check_arg_types(cls, args, where)
    passed = {k: v for k, v in given.items() if takes_any or k in named}
    # None is the build's "not set" (pretrained, width), handed over whatever the class annotates, as before
    # these checks: a class of one's own that names `pretrained: str` and copes with None still runs
    check_arg_types(cls, {k: v for k, v in passed.items() if v is not None}, where, prefix="", keys=keys)
    check = getattr(cls, "check_args", None)  # a class that validates its own args does it here, on the driver,
    if check is not None:                     # before a run writes its config (a pasted secret fails first)
        check(where, args)
    files = getattr(cls, "check_files", None)  # the files its args name exist here (only where it runs, unlike
    if files is not None:                      # check_args, which config.check_scorer_args runs in every stage)
        args = files(where, args)              # and are passed on absolute: an actor's cwd may not be the driver's
    return {**passed, **args}
