"""A client for OpenAI-compatible chat-completions servers (vLLM, TGI, hosted APIs).

Requests run in a bounded thread pool (``max_concurrency`` in flight per client). 429 and 5xx
answers, timeouts and dropped connections are retried with exponential backoff and jitter,
honouring Retry-After; other 4xx fail at once. An answer that is not JSON, or whose text the
caller's parser rejects or fails on, is "malformed" and not retried. Every request returns an ``Outcome``
with its value (None when missing) and its event counts, so a build can report exactly what
went wrong instead of crashing.

The API key is read from the environment variable NAMED in the config (``api_key_env``) and
only ever goes into the Authorization header: it is never logged, stored in the config or put
in an error message.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Literal
from urllib.parse import urlsplit

import requests
from pydantic import BaseModel, ConfigDict, Field, field_validator
from urllib3.exceptions import ReadTimeoutError

from raypref.judge_rubric import MalformedAnswer

log = logging.getLogger(__name__)

# event names, in the order the summary reports them
REQUESTS, OK = "requests", "ok"
HTTP_429, HTTP_5XX, HTTP_4XX = "http_429", "http_5xx", "http_4xx"
TIMEOUT, CONNECTION_ERROR = "timeout", "connection_error"
MALFORMED, FAILED = "malformed", "failed"
EVENTS = (REQUESTS, OK, HTTP_429, HTTP_5XX, HTTP_4XX, TIMEOUT, CONNECTION_ERROR, MALFORMED, FAILED)

# upper case only: many API keys are letters, digits and '_' (hf_..., gsk_...), so the wider POSIX
# pattern would take a pasted key, which config.yaml and the not-set error would then show
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# the last word of an extra_body field naming a credential (api_key, x-api-key, apiKey, access_token,
# Authorization...); 'max_tokens' or 'stop_token_ids' end in another word and pass
_SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "authorization", "auth", "bearer",
                 "credential", "credentials", "cookie", "session"}

_SCHEMA = re.compile(r"json|schema|format|grammar|regex|guided", re.I)


def _secret_fields(obj, prefix: str = "") -> list[str]:
    """The dotted names of the fields in ``obj`` (nested too) that name a credential."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(k)).lower()
            words = [w for w in re.split(r"[^a-z0-9]+", words) if w]
            if words and words[-1] in _SECRET_WORDS:
                found.append(f"{prefix}{k}")
            if not _SCHEMA.search(str(k)):  # a JSON schema's properties may well be named 'token'
                found += _secret_fields(v, f"{prefix}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _secret_fields(v, f"{prefix}{i}.")
    return found


class HttpJudgeConf(BaseModel):
    """The chat-completions endpoint a judge calls, and how it copes with failures."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(..., description="API root; requests go to <base_url>/chat/completions (e.g. http://vllm:8000/v1).")
    model: str = Field(..., description="Model name the server serves (the request's 'model' field).")
    api_key_env: str | None = Field(
        None, description="NAME of the environment variable holding the API key (sent as a Bearer token; upper-case "
        "letters, digits and '_', so that a pasted key is refused); "
        "None: no Authorization header (a local vLLM without --api-key). Never put the key itself in a config."
    )
    max_concurrency: int = Field(4, ge=1, description="Requests in flight at once, per judge actor.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds the server may stay silent (before the answer starts, or "
                             "between its bytes: requests' read timeout, not a cap on the whole answer) before the attempt "
                             "counts as a timeout.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for the TCP connection.")
    max_retries: int = Field(4, ge=0, description="Retries after a 429, 5xx, timeout or dropped connection before giving up.")
    backoff_s: float = Field(1.0, ge=0, description="Delay before the first retry; doubles each retry, with random jitter.")
    max_backoff_s: float = Field(60.0, ge=0, description="Cap on one retry's delay, Retry-After included.")
    temperature: float | None = Field(0.0, ge=0, description="Sampling temperature (0: the judge's most likely answer); "
                                      "null: not sent (OpenAI's reasoning models take only their default).")
    max_tokens: int = Field(512, ge=1, description="Answer length cap.")
    max_tokens_key: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", description="The request field the cap is sent in: max_tokens (vLLM and most servers), or "
        "max_completion_tokens (OpenAI's reasoning models refuse max_tokens).")
    json_mode: bool = Field(False, description="Send response_format={'type': 'json_object'} (vLLM and OpenAI honour it).")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="Extra fields merged into each request body (e.g. vLLM's guided_json); a "
        "field named like a credential (api_key, access_token, Authorization...) is refused: use api_key_env."
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials; name the key's environment variable in api_key_env")
        if parts.query or parts.fragment:  # it would be logged and saved in config.yaml, and break the path below
            raise ValueError("must not have a query string or fragment (requests go to <base_url>/chat/completions); "
                             "name a key's environment variable in api_key_env")
        return v.rstrip("/")

    @field_validator("extra_body")
    @classmethod
    def _no_secret(cls, v: dict) -> dict:
        # names only: the values are never echoed
        if bad := _secret_fields(v):
            raise ValueError(f"field {bad[0]!r} looks like a credential; the key goes only in the environment "
                             "variable that api_key_env names (sent as the Authorization header)")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        # the value is never echoed: if someone pasted the key here, it must not reach a log
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError("must be the NAME of an environment variable (upper-case letters, digits, '_'), "
                             "not the key itself")
        return v


def read_api_key(env_name: str | None) -> str | None:
    if env_name is None:
        return None
    key = os.environ.get(env_name, "")
    if not key:
        raise ValueError(f"judge API key: environment variable {env_name} is not set or empty")
    return key


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(retry: int, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Delay before retry number ``retry`` (0-based): the server's Retry-After when given, else
    base * 2^retry with "equal jitter" (a uniform draw in its upper half, so clients that failed
    together do not retry together); never above ``cap``."""
    if retry_after is not None:
        return min(retry_after, cap)
    d = min(cap, base * 2.0**retry)
    return d / 2 + rng.uniform(0, d / 2)


@dataclass
class Outcome:
    """One request's result: ``value`` is the parsed answer or None (missing), ``error`` why."""

    value: Any = None
    events: Counter = field(default_factory=Counter)
    error: str = ""


def _is_timeout(exc: Exception) -> bool:
    # requests raises ConnectionError, not Timeout, when the body (not the headers) is late
    return isinstance(exc, requests.Timeout) or any(isinstance(a, ReadTimeoutError) for a in exc.args)


class ChatClient:
    """Sends chat-completions requests with bounded concurrency, retries and event counts. It holds
    threads and open connections until ``close`` (or the end of a ``with`` block)."""

    def __init__(self, conf: HttpJudgeConf, seed: int | None = None):
        self.conf = conf
        self.url = conf.base_url + "/chat/completions"
        key = read_api_key(conf.api_key_env)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._local = threading.local()  # one requests.Session per worker thread
        self._sessions: list[requests.Session] = []
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(conf.max_concurrency, thread_name_prefix="judge-http")
        self._sleep = time.sleep  # a test records the delays instead of waiting them out
        self._closed = False

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:  # no headers: the key must not leak through a repr
        return f"ChatClient(url={self.url!r}, model={self.conf.model!r})"

    def _session(self) -> requests.Session:
        if self._closed:  # a new session here would open connections that nothing closes
            raise RuntimeError(f"{self!r} is closed")
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            self._sessions.append(s)
        return s

    def _body(self, messages: list[dict]) -> dict:
        c = self.conf
        body = {"model": c.model, "messages": messages, c.max_tokens_key: c.max_tokens}
        if c.temperature is not None:
            body["temperature"] = c.temperature
        if c.json_mode:
            body["response_format"] = {"type": "json_object"}
        body.update(c.extra_body)
        return body

    def _delay(self, retry: int, retry_after: float | None) -> float:
        with self._rng_lock:
            return backoff_delay(retry, self.conf.backoff_s, self.conf.max_backoff_s, retry_after, self._rng)

    def complete(self, messages: list[dict], parse: Callable[[dict], Any], what: str = "") -> Outcome:
        """One request with retries; ``parse`` turns the decoded response body into the value
        and raises MalformedAnswer (or ValueError) when it cannot. ``what`` names the request's
        rows in the log (e.g. its prompt)."""
        c = self.conf
        where = f"{self.url} ({what})" if what else self.url
        out = Outcome()
        out.events[REQUESTS] += 1
        body = self._body(messages)
        for attempt in range(c.max_retries + 1):
            retry_after = None
            try:
                r = self._session().post(
                    self.url, json=body, headers=self._headers, timeout=(c.connect_timeout_s, c.timeout_s)
                )
            except requests.RequestException as e:
                kind = TIMEOUT if _is_timeout(e) else CONNECTION_ERROR
                out.events[kind] += 1
                out.error = kind
            else:
                if r.status_code == 200:
                    try:
                        out.value = parse(r.json())
                    # JSONDecodeError is a ValueError; the others are a body of an unforeseen shape reaching
                    # the parser, which must cost this image its score, not kill the actor and the build
                    except (ValueError, MalformedAnswer, TypeError, KeyError, AttributeError, IndexError) as e:
                        out.events[MALFORMED] += 1
                        out.error = f"malformed answer: {str(e)[:200]}"
                        log.warning("judge %s: %s", where, out.error)
                    else:
                        out.events[OK] += 1
                    return out
                if r.status_code == 429 or r.status_code >= 500:
                    out.events[HTTP_429 if r.status_code == 429 else HTTP_5XX] += 1
                    out.error = f"HTTP {r.status_code}"
                    retry_after = parse_retry_after(r.headers.get("Retry-After"))
                else:
                    out.events[HTTP_4XX] += 1
                    out.events[FAILED] += 1
                    out.error = f"HTTP {r.status_code} (not retried)"
                    log.warning("judge %s: %s", where, out.error)
                    return out
            if attempt == c.max_retries:
                break
            delay = self._delay(attempt, retry_after)
            log.info("judge %s: %s, retry %d/%d in %.2fs", where, out.error, attempt + 1, c.max_retries, delay)
            self._sleep(delay)
        out.events[FAILED] += 1
        out.error = f"gave up after {c.max_retries + 1} attempts (last: {out.error})"
        log.warning("judge %s: %s", where, out.error)
        return out

    def complete_all(self, jobs: list[tuple]) -> list[Outcome]:
        """Many (messages, parse[, what]) requests, at most ``max_concurrency`` in flight; outcomes in input order."""
        if self._closed:  # as _session says it, rather than the thread pool's "cannot schedule new futures"
            raise RuntimeError(f"{self!r} is closed")
        return list(self._pool.map(lambda job: self.complete(*job), jobs))

    def close(self) -> None:
        """Wait for the requests in flight, then end the threads and close every connection; the
        client takes no request after (a second close does nothing). The requests it waits for are
        complete_all's: a complete() called directly on another thread must end before close."""
        self._pool.shutdown(wait=True)
        self._closed = True  # after the requests in flight: a retry of theirs takes a session
        for s in self._sessions:
            s.close()
