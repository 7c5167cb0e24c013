"""A multimodal-LLM judge answering the VisionPrefer rubric (prompt-following, fidelity,
aesthetic, harmlessness, 1-10 each, with a rationale), as a scorer.

Backends:
- ``http``: any OpenAI-compatible chat-completions server (vLLM, TGI, a hosted API); see
  raypref.judge_http for concurrency, retries, timeouts and how the API key is passed.
- ``local``: a transformers vision-language model by hub name or path (AutoProcessor +
  AutoModelForImageTextToText, the processor's chat template, greedy generate).

Modes: ``single`` rates each image alone; ``pairwise`` shows two images of the same prompt and
rates both (raypref.judge_rubric.request_plan says which images go together); with
``both_orders`` each such request is repeated with the images swapped and an image's scores are
the mean of its ratings, so a judge's preference for the first or second place cancels.

Outputs per image: the main score (mean of the four aspects), one column per aspect, the
rationale, and the request's event counts (``judge_events_<name>``, JSON) that the build summary
adds up. An answer that cannot be parsed leaves the image's scores NaN (missing), never an error;
with both_orders an image keeps the mean of the ratings that did parse.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raypref import judge_rubric as R
from raypref.judge_http import MALFORMED, OK, REQUESTS, ChatClient, HttpJudgeConf, Outcome, read_api_key
from raypref.scoring import Scorer, pick_device


class LLMJudgeArgs(BaseModel):
    """The ``args`` of an llm_judge scorer."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["http", "local"] = Field("http", description="http: an OpenAI-compatible server; local: a transformers VLM.")
    mode: Literal["single", "pairwise"] = Field("single", description="Rate each image alone, or two images of a prompt side by side.")
    both_orders: bool = Field(False, description="Pairwise: ask each request again with the two images swapped and average each image's two ratings, so the judge's preference for a place cancels (twice the requests).")
    http: HttpJudgeConf | None = Field(None, description="The endpoint (backend=http).")
    max_new_tokens: int = Field(512, ge=1, description="Answer length cap (backend=local).")
    batch_size: int = Field(4, ge=1, description="Requests per generate call (backend=local).")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="Weights dtype (backend=local).")
    seed: int | None = Field(None, description="Seed of the retry jitter (backend=http).")

    @model_validator(mode="after")
    def _backend_section(self):
        if self.backend == "http" and self.http is None:
            raise ValueError("backend 'http' needs an 'http' section (base_url, model, ...)")
        if self.backend == "local" and self.http is not None:
            raise ValueError("backend 'local' takes no 'http' section")
        if self.both_orders and self.mode != "pairwise":
            raise ValueError("both_orders needs mode 'pairwise'")
        return self


def parse_args(name: str, args: dict, where: str | None = None) -> LLMJudgeArgs:
    """Validate; the error names each bad key but never echoes a value (it could be a pasted key)."""
    try:
        return LLMJudgeArgs.model_validate(args)
    except ValidationError as e:
        from raypref.config import validation_lines

        head = where or f"scorer {name!r}"
        raise ValueError(f"{head}: invalid llm_judge args\n" + "\n".join(validation_lines(e, "args."))) from None


class LocalVLM:
    """A transformers vision-language model answering chat turns, greedily, in batches."""

    def __init__(self, model: str, device: str, dtype: str, max_new_tokens: int, batch_size: int):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model)
        self.processor.tokenizer.padding_side = "left"  # batched generation continues from the right end
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=getattr(torch, dtype)).to(device).eval()
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def complete_all(self, jobs) -> list[Outcome]:
        import torch

        outcomes = []
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            inputs = self.processor.apply_chat_template(
                [job[0] for job in chunk], add_generation_prompt=True, tokenize=True, return_dict=True,
                return_tensors="pt", processor_kwargs={"padding": True},
            ).to(self.model.device, dtype=self.model.dtype)
            with torch.no_grad():
                gen = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            texts = self.processor.batch_decode(gen[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for text, (_, parse, *_) in zip(texts, chunk):
                out = Outcome()
                out.events[REQUESTS] += 1
                try:
                    out.value = parse(text)
                    out.events[OK] += 1
                except R.MalformedAnswer as e:
                    out.events[MALFORMED] += 1
                    out.error = f"malformed answer: {e}"
                outcomes.append(out)
        return outcomes


class LLMJudge(Scorer):
    outputs = (*R.ASPECTS, "rationale", "judge_events")
    # how requests are paced and retried, not what an answer says: changing them keeps stored scores
    untracked_args = ("http.max_concurrency", "http.timeout_s", "http.connect_timeout_s", "http.max_retries",
                      "http.backoff_s", "http.max_backoff_s", "seed")

    @classmethod
    def check_args(cls, where: str, args: dict) -> None:
        """The driver's check (registry.constructor_kwargs), before a run writes its config."""
        parse_args("", args, where)

    @classmethod
    def check_env(cls, where: str, args: dict, local_ray: bool) -> None:
        """The driver's check of this machine's environment (config.check_scorer_args, in a stage that runs
        the judge, before its config is written): the API key's variable. The actors of a Ray started here
        inherit the driver's environment, so a missing key is an error; a cluster's worker nodes may set it
        where the driver has not, so there it is a warning. The key's value is never shown."""
        conf = parse_args("", args, where)
        if conf.backend != "http":
            return
        try:
            read_api_key(conf.http.api_key_env)
        except ValueError as e:
            if local_ray:
                raise ValueError(f"{where}: {e} (the judge's actors run on a Ray started on this machine, "
                                 "with this environment)") from None
            print(f"[judge] warning: {where}: {e} on this machine; it goes on, as the cluster's worker nodes "
                  "may set it", flush=True)

    def __init__(self, name: str = "judge", model: str = "", pretrained: str | None = None, num_gpus: float = 0.0, **args):
        super().__init__(name)
        conf = parse_args(name, args)
        self.mode = conf.mode
        self.both_orders = conf.both_orders
        self.backend = conf.backend
        if conf.backend == "http":
            self.client = ChatClient(conf.http, seed=conf.seed)
        else:
            from raypref.models import check_model_ref

            model = check_model_ref(model, what=f"scorer {name!r} model")  # also turns a tiny: ref into its path
            self.client = LocalVLM(model, pick_device(num_gpus), conf.dtype, conf.max_new_tokens, conf.batch_size)

    def close(self) -> None:
        """Shut the http client's threads and connections (again: a no-op)."""
        client = getattr(self, "client", None)  # an __init__ that failed set none
        if isinstance(client, ChatClient):
            client.close()

    def __del__(self):
        # Ray Data drops a map_batches actor's UDF when the pool winds down gracefully; a killed actor
        # runs nothing, and its process exit frees the sockets anyway
        self.close()

    def _job(self, prompt: str, images: list):
        n = len(images)
        what = f"prompt {prompt[:80]!r}" + (f", {n} images" if n > 1 else "")  # names the rows in a warning
        if self.backend == "http":
            return R.openai_messages(prompt, images), lambda body: R.parse_answer(R.answer_text(body), n), what
        return R.local_messages(prompt, images), lambda text: R.parse_answer(text, n), what

    def score(self, images, prompts):
        plan = R.request_plan(list(prompts), self.mode, self.both_orders)
        outcomes = self.client.complete_all([self._job(prompts[shown[0]], [images[i] for i in shown]) for shown, _ in plan])
        n = len(images)
        # per image: the ratings that parsed (two with both_orders), else the errors
        ratings: list[list[dict]] = [[] for _ in range(n)]
        errors: list[list[str]] = [[] for _ in range(n)]
        events = [Counter() for _ in range(n)]
        for (shown, rated), o in zip(plan, outcomes):
            # a request's events go on the first image it shows, so the summary counts each once
            events[shown[0]].update(o.events)
            for pos, i in enumerate(shown):
                if i not in rated:
                    continue
                if o.value is None:
                    errors[i].append(o.error)
                else:
                    ratings[i].append(o.value[pos])
        out = {a: np.full(n, np.nan, np.float32) for a in R.ASPECTS}
        reasons = [""] * n
        for i in range(n):
            if ratings[i]:  # the mean of the orders that parsed
                for a in R.ASPECTS:
                    out[a][i] = np.mean([r[a] for r in ratings[i]])
                reasons[i] = " | ".join(dict.fromkeys(r["rationale"] for r in ratings[i]))
            elif errors[i]:
                reasons[i] = "[missing] " + " | ".join(dict.fromkeys(errors[i]))
        main = np.stack([out[a] for a in R.ASPECTS]).mean(axis=0) if n else np.zeros(0, np.float32)
        return {"": main, **out, "rationale": reasons, "judge_events": [R.encode_events(e) for e in events]}
