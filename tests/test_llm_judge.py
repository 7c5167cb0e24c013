"""The multimodal-LLM judge: rubric parsing, the chat-completions client against a real loopback
server with injected failures, the local transformers backend on a tiny LLaVA, and one build."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from raypref import judge_rubric as R
from raypref import schema as S
from raypref.judge_http import ChatClient, HttpJudgeConf, backoff_delay, parse_retry_after
from raypref.registry import resolve


GOOD = {"prompt_following": 8, "fidelity": 6, "aesthetic": 7, "harmlessness": 10}  # mean 7.75
WORSE = {"prompt_following": 2, "fidelity": 3, "aesthetic": 4, "harmlessness": 10}  # mean 4.75
KEY_ENV = "RAYPREF_TEST_JUDGE_KEY"


def _img(colour) -> Image.Image:
    return Image.new("RGB", (16, 16), colour)


# ---------------------------------------------------------------- rubric and parser (pure)


def test_parse_single_tolerates_fences_prose_and_key_spelling():
    text = 'Here you go:\n```json\n{"Prompt-Following": 8, "fidelity": "6", "aesthetic": 7.5, "Harmlessness": 10, "rationale": "clean"}\n```\nThanks'
    assert R.parse_single(text) == {"prompt_following": 8.0, "fidelity": 6.0, "aesthetic": 7.5, "harmlessness": 10.0, "rationale": "clean"}
    # a brace in the prose before the object is skipped; a missing rationale is an empty one
    assert R.parse_single('scores {see below} {"prompt_following": 1, "fidelity": 1, "aesthetic": 1, "harmlessness": 1}')["rationale"] == ""


@pytest.mark.parametrize(
    "text, reason",
    [
        ("I cannot rate this image.", "no JSON object"),
        ('{"prompt_following": 8, "fidelity": 6, "aesthetic": 7}', "'harmlessness' missing"),
        ('{"prompt_following": 11, "fidelity": 6, "aesthetic": 7, "harmlessness": 10}', "outside"),
        ('{"prompt_following": 0, "fidelity": 6, "aesthetic": 7, "harmlessness": 10}', "outside"),
        ('{"prompt_following": "high", "fidelity": 6, "aesthetic": 7, "harmlessness": 10}', "not a number"),
        ('{"prompt_following": true, "fidelity": 6, "aesthetic": 7, "harmlessness": 10}', "not a number"),
        ('{"prompt_following": NaN, "fidelity": 6, "aesthetic": 7, "harmlessness": 10}', "outside"),
        ('[8, 6, 7, 10]', "no JSON object"),
    ],
)
def test_parse_single_rejects_what_is_not_a_rating(text, reason):
    with pytest.raises(R.MalformedAnswer, match=reason):
        R.parse_single(text)


def test_parse_pairwise_maps_each_image_to_its_own_scores():
    text = json.dumps({"Image 1": GOOD, "image_2": WORSE, "rationale": "the first is sharper"})
    a, b = R.parse_pairwise(text)
    assert {k: a[k] for k in R.ASPECTS} == GOOD and {k: b[k] for k in R.ASPECTS} == WORSE
    assert a["rationale"] == b["rationale"] == "the first is sharper"
    with pytest.raises(R.MalformedAnswer, match="'image_2' missing"):
        R.parse_pairwise(json.dumps({"image_1": GOOD}))
    with pytest.raises(R.MalformedAnswer, match="image_2: aspect 'fidelity' missing"):
        R.parse_pairwise(json.dumps({"image_1": GOOD, "image_2": {"prompt_following": 3}}))


def test_answer_text_reads_chat_completions_bodies():
    assert R.answer_text({"choices": [{"message": {"content": "hi"}}]}) == "hi"
    assert R.answer_text({"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]}) == "ab"
    for body in ({}, {"choices": []}, {"choices": [{"message": {"content": None}}]}, ["x"]):
        with pytest.raises(R.MalformedAnswer):
            R.answer_text(body)


def test_answer_text_turns_content_parts_without_string_text_into_malformed():
    parts = lambda *ps: {"choices": [{"message": {"content": list(ps)}}]}  # noqa: E731
    assert R.answer_text(parts({"type": "text", "text": None}, {"type": "text", "text": "ok"})) == "ok"
    for body in (parts({"type": "text", "text": None}), parts({"type": "text", "text": 7}),
                 parts({"type": "text", "text": ["a"]}, "b"), {"choices": [{"message": {"content": 7}}]},
                 {"choices": [{"message": "hi"}]}, {"choices": ["hi"]}):
        with pytest.raises(R.MalformedAnswer):
            R.answer_text(body)


def test_request_plan_rates_every_image_exactly_once():
    assert R.request_plan(["a", "b"], "single") == [((0,), (0,)), ((1,), (1,))]
    plan = R.request_plan(["a", "a", "a", "b", "c", "c"], "pairwise")
    # a: (0,1) then the odd one out beside the first; b alone; c as one pair
    assert plan == [((0, 1), (0, 1)), ((2, 0), (2,)), ((3,), (3,)), ((4, 5), (4, 5))]
    assert sorted(i for _, rated in plan for i in rated) == list(range(6))
    # both orders: every two-image request again, swapped; an image shown beside another is rated
    # twice, once in each place
    plan = R.request_plan(["a", "a", "a", "b", "c", "c"], "pairwise", both_orders=True)
    assert plan == [((0, 1), (0, 1)), ((1, 0), (1, 0)), ((2, 0), (2,)), ((0, 2), (2,)), ((3,), (3,)),
                    ((4, 5), (4, 5)), ((5, 4), (5, 4))]
    places = Counter((i, shown.index(i)) for shown, rated in plan for i in rated if len(shown) == 2)
    assert set(places.values()) == {1} and {i for i, _ in places} == {0, 1, 2, 4, 5}


def test_messages_carry_the_image_as_a_data_url_and_the_rubric():
    msgs = R.openai_messages('a red "circle"', [_img((200, 0, 0)), _img((0, 0, 200))])
    parts = msgs[0]["content"]
    assert msgs[0]["role"] == "user" and [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    url = parts[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    back = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    assert back.getpixel((3, 3)) == (0, 0, 200)
    text = parts[2]["text"]
    assert '"a red \\"circle\\""' in text and "image_1" in text and all(a in text for a in R.ASPECTS)
    single = R.local_messages("x", [_img((0, 0, 0))])[0]["content"]
    assert [p["type"] for p in single] == ["image", "text"] and "image_1" not in single[1]["text"]


def test_events_encode_and_sum():
    assert R.encode_events(Counter(requests=1, http_429=2, ok=0)) == '{"http_429":2,"requests":1}'
    assert R.sum_events(['{"requests":1,"ok":1}', "{}", "", None, '{"requests":1,"malformed":1}']) == {
        "malformed": 1, "ok": 1, "requests": 2}
    # the summary lists them as the README shows: requests, ok, then the failures in judge_http.EVENTS' order
    summed = R.sum_events(['{"http_5xx":1,"malformed":1,"ok":1,"requests":2,"zzz":1}', '{"http_429":1,"requests":1}'])
    assert list(summed) == ["requests", "ok", "http_429", "http_5xx", "malformed", "zzz"]


def test_backoff_and_retry_after():
    rng = random.Random(0)
    assert backoff_delay(3, 1.0, 60.0, 0.0, rng) == 0.0  # Retry-After: 0 means now
    assert backoff_delay(0, 1.0, 5.0, 120.0, rng) == 5.0  # capped
    for retry, lo, hi in ((0, 0.5, 1.0), (2, 2.0, 4.0), (10, 3.0, 6.0)):  # 1 * 2^retry, capped at 6, upper half
        d = [backoff_delay(retry, 1.0, 6.0, None, rng) for _ in range(50)]
        assert lo <= min(d) and max(d) <= hi and len(set(d)) > 1
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


# ---------------------------------------------------------------- a real chat-completions server on loopback


class JudgeServer:
    """POST /v1/chat/completions on 127.0.0.1, answering by a script keyed on the request.

    ``script(text, attempt, n_images)`` gets the request's text, how many times this exact request
    body was seen before, and how many images it shows; it returns (status, headers, body, delay)."""

    def __init__(self, script):
        self.script = script
        self.seen = Counter()
        self.auth = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    key = hashlib.sha256(raw).hexdigest()
                    attempt = outer.seen[key]
                    outer.seen[key] += 1
                    outer.auth.append(self.headers.get("Authorization"))
                if self.path != "/v1/chat/completions":
                    status, headers, body, delay = 404, {}, b"{}", 0.0
                else:
                    req = json.loads(raw)
                    parts = req["messages"][0]["content"]
                    text = " ".join(p.get("text", "") for p in parts)
                    n_images = sum(p["type"] == "image_url" for p in parts)
                    status, headers, body, delay = outer.script(text, attempt, n_images)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client timed out and hung up
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def chat(content: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()


def rating(n_images: int) -> bytes:
    if n_images == 2:
        return chat(json.dumps({"image_1": GOOD, "image_2": WORSE, "rationale": "first is better"}))
    return chat("```json\n" + json.dumps({**GOOD, "rationale": "fine"}) + "\n```")


def scripted(text, attempt, n_images):
    """Behaviour by the case named in the prompt."""
    case = re.search(r"case:(\w+)", text).group(1)
    ok = (200, {}, rating(n_images), 0.0)
    if case == "ok":
        return ok
    if case == "r429":  # rate limited once, told to come back now
        return (429, {"Retry-After": "0"}, b'{"error": "rate limited"}', 0.0) if attempt == 0 else ok
    if case == "r500":  # two server errors, then an answer
        return (500, {}, b'{"error": "boom"}', 0.0) if attempt < 2 else ok
    if case == "slow":  # the first answer comes after the client's timeout
        return (200, {}, rating(n_images), 5.0) if attempt == 0 else ok
    if case == "garbage":  # a 200 whose body is not JSON
        return 200, {}, b'{"choices": [{"message": {"content": "trunc', 0.0
    if case == "notrubric":  # valid JSON, but not a rating
        return 200, {}, chat('{"score": 5, "comment": "nice"}'), 0.0
    if case == "down":  # never recovers
        return 503, {}, b"unavailable", 0.0
    if case == "denied":
        return 401, {}, b'{"error": "bad key"}', 0.0
    raise AssertionError(case)


def http_args(base_url, **over) -> dict:
    conf = {"base_url": base_url, "model": "test-vlm", "api_key_env": KEY_ENV, "max_concurrency": 4,
            "timeout_s": 2.0, "connect_timeout_s": 1.0, "max_retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.05}
    conf.update(over)
    return {"backend": "http", "http": conf, "seed": 0}


def test_http_judge_counts_each_failure_and_scores_good_answers(monkeypatch, caplog):
    secret = "sk-test-" + "7f3a9c" * 6
    monkeypatch.setenv(KEY_ENV, secret)
    caplog.set_level(logging.DEBUG)
    cases = ["ok", "r429", "r500", "slow", "garbage", "notrubric", "down", "denied"]
    images = [_img((30 * i, 0, 0)) for i in range(len(cases))]
    with JudgeServer(scripted) as server:
        judge = resolve("llm_judge")(name="judge", **http_args(server.base_url))
        out = judge.score(images, [f"a red circle case:{c}" for c in cases])
    events = R.sum_events(out["judge_events"])
    # 'down' is tried 1 + max_retries = 3 times; 'denied' (401) is not retried
    assert events == {"requests": 8, "ok": 4, "http_429": 1, "http_5xx": 2 + 3, "http_4xx": 1, "timeout": 1,
                      "malformed": 2, "failed": 2}
    good = [cases.index(c) for c in ("ok", "r429", "r500", "slow")]
    for i in range(len(cases)):
        if i in good:
            assert out[""][i] == pytest.approx(7.75) and out["fidelity"][i] == 6.0 and out["rationale"][i] == "fine"
        else:
            assert math.isnan(out[""][i]) and all(math.isnan(out[a][i]) for a in R.ASPECTS)
            assert out["rationale"][i].startswith("[missing]")
    assert "gave up after 3 attempts (last: HTTP 503)" in out["rationale"][cases.index("down")]
    assert "HTTP 401 (not retried)" in out["rationale"][cases.index("denied")]
    # the key went to the server in the header, and nowhere else
    assert server.auth and set(server.auth) == {f"Bearer {secret}"}
    assert sum(server.seen.values()) == len(server.auth) == 1 + 2 + 3 + 2 + 1 + 1 + 3 + 1
    leaks = [caplog.text, *out["rationale"], *out["judge_events"], repr(judge.client), repr(judge.client.conf)]
    assert all(secret not in t for t in leaks)
    assert "retry 1/2" in caplog.text  # retries are visible in the log
    # each warning names the prompt of the rows it failed, not just the server
    assert "(prompt 'a red circle case:down'): gave up after 3 attempts" in caplog.text
    assert "(prompt 'a red circle case:garbage'): malformed answer" in caplog.text


def test_http_judge_honours_retry_after_and_backs_off(monkeypatch):
    with JudgeServer(scripted) as server:
        client = ChatClient(HttpJudgeConf(base_url=server.base_url, model="m", backoff_s=4.0, max_backoff_s=30.0), seed=0)
        waits = []
        client._sleep = waits.append
        parse = lambda body: R.parse_answer(R.answer_text(body), 1)  # noqa: E731
        o = client.complete(R.openai_messages("case:r429", [_img((0, 0, 0))]), parse)
        assert o.value is not None and waits == [0.0]  # Retry-After: 0, not the 2-4 s backoff
        waits.clear()
        o = client.complete(R.openai_messages("case:r500", [_img((0, 0, 0))]), parse)
        assert o.value is not None and len(waits) == 2
        assert 2.0 <= waits[0] <= 4.0 and 4.0 <= waits[1] <= 8.0  # 4 * 2^retry, jittered in its upper half
        assert server.auth == [None] * 5  # no api_key_env: no Authorization header
        client.close()


def test_http_judge_pairwise_maps_scores_to_each_image(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    prompts = ["case:ok"] * 3 + ["case:garbage"] * 2
    images = [_img((50 * i, 10, 10)) for i in range(5)]
    with JudgeServer(scripted) as server:
        out = resolve("llm_judge")(name="pj", mode="pairwise", **http_args(server.base_url))
        res = out.score(images, prompts)
        shown = sorted(server.seen)
    # (0,1) and (2,0): image_1 of each request gets GOOD, image_2 WORSE; (3,4) is garbage
    assert np.allclose(res[""][:3], [7.75, 4.75, 7.75]) and np.isnan(res[""][3:]).all()
    assert res["rationale"][1] == "first is better"
    assert len(shown) == 3 and R.sum_events(res["judge_events"]) == {"requests": 3, "ok": 2, "malformed": 1}


def test_http_judge_both_orders_cancels_position_bias(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    # the scripted judge rates whatever it sees first GOOD and second WORSE: pure position bias
    prompts = ["case:ok"] * 3 + ["case:garbage"] * 2
    images = [_img((50 * i, 10, 10)) for i in range(5)]
    with JudgeServer(scripted) as server:
        res = resolve("llm_judge")(name="pj", mode="pairwise", both_orders=True, **http_args(server.base_url)).score(images, prompts)
    # every image was seen once in each place: (7.75 + 4.75) / 2 for all three, aspect by aspect
    assert np.allclose(res[""][:3], 6.25) and np.allclose(res["fidelity"][:3], 4.5) and np.isnan(res[""][3:]).all()
    assert res["rationale"][0] == "first is better" and res["rationale"][3].startswith("[missing] malformed answer")
    # (0,1) (1,0) (2,0) (0,2) (3,4) (4,3); image 0 is shown first twice, so it carries two requests' events
    assert R.sum_events(res["judge_events"]) == {"requests": 6, "ok": 4, "malformed": 2}
    assert json.loads(res["judge_events"][0]) == {"ok": 2, "requests": 2}
    with pytest.raises(ValueError, match="both_orders needs mode 'pairwise'"):
        resolve("llm_judge")(name="sj", both_orders=True, **http_args(server.base_url))


def test_http_judge_through_scorer_call_writes_columns(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    from raypref import images as I

    batch = pa.table({
        S.PROMPT_ID: ["p1", "p2"], S.PROMPT: ["case:ok", "case:notrubric"],
        S.SAMPLE_ID: [["a", "b"], ["c"]],
        S.IMAGE: [[I.encode(_img((1, 2, 3))), I.encode(_img((4, 5, 6)))], [I.encode(_img((7, 8, 9)))]],
    })
    with JudgeServer(scripted) as server:
        out = resolve("llm_judge")(name="j", **http_args(server.base_url))(batch)
    assert out.column(S.score_column("j")).to_pylist()[0] == [7.75, 7.75]
    assert math.isnan(out.column(S.score_column("j", "aesthetic")).to_pylist()[1][0])
    assert out.column(S.rationale_column("j")).to_pylist()[0] == ["fine", "fine"]
    assert [[json.loads(e) for e in g] for g in out.column(S.judge_events_column("j")).to_pylist()] == [
        [{"ok": 1, "requests": 1}] * 2, [{"malformed": 1, "requests": 1}]]


def test_a_judge_dropped_as_ray_data_drops_its_actor_closes_its_client(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    with JudgeServer(scripted) as server:
        judge = resolve("llm_judge")(name="j", **http_args(server.base_url))
        judge.score([_img((1, 2, 3))] * 3, ["case:ok"] * 3)
        client = judge.client
        adapters = [a for s in client._sessions for a in s.adapters.values()]
        assert sum(len(a.poolmanager.pools) for a in adapters) > 0  # connections held open between batches
        del judge  # what Ray Data's actor shutdown does to its UDF (MapWorker.__ray_shutdown__)
    assert client._pool._shutdown and all(len(a.poolmanager.pools) == 0 for a in adapters)
    with pytest.raises(RuntimeError, match="after shutdown"):
        client._pool.submit(print)


def test_a_client_closes_its_connections_when_its_with_block_ends_and_takes_no_request_after():
    with JudgeServer(scripted) as server:
        msgs = R.openai_messages("case:ok", [_img((0, 0, 0))])
        with ChatClient(HttpJudgeConf(base_url=server.base_url, model="m")) as client:
            assert [o.events["ok"] for o in client.complete_all([(msgs, R.answer_text)] * 2)] == [1, 1]
            sessions = list(client._sessions)
            adapters = [a for s in sessions for a in s.adapters.values()]
            assert sum(len(a.poolmanager.pools) for a in adapters) > 0
        assert client._pool._shutdown and all(len(a.poolmanager.pools) == 0 for a in adapters)
        # a request from another thread after close would open a session (and connections) nothing closes
        with pytest.raises(RuntimeError, match=r"ChatClient\(url=.* is closed"):
            client.complete(msgs, R.answer_text)
        assert client._sessions == sessions  # and made none
        client.close()  # again: nothing


def _wait_for(path, line: str, seconds: float = 60.0) -> list[str]:
    deadline = time.time() + seconds
    while time.time() < deadline and line not in (lines := path.read_text().splitlines() if path.exists() else []):
        time.sleep(0.2)
    return path.read_text().splitlines() if path.exists() else []


def test_a_judge_in_ray_data_or_the_evals_shared_scorer_closes_its_client_when_the_pool_ends(ray_session, tmp_path):
    import ray
    from ray.data import ActorPoolStrategy

    from raypref import images as I
    from raypref.config import PoolConf, ScorerConf
    from raypref.shared_scorer import scorer_hosts
    from tests.closing_judge import ClosingJudge

    batch = pa.table({S.PROMPT_ID: ["p1"], S.PROMPT: ["case:ok"], S.SAMPLE_ID: [["a", "b"]],
                      S.IMAGE: [[I.encode(_img((1, 2, 3))), I.encode(_img((4, 5, 6)))]]})
    with JudgeServer(scripted) as server:
        args = http_args(server.base_url, api_key_env=None)  # the session's Ray workers lack a key set here
        # Ray Data drops the UDF when its pool winds down (MapWorker.__ray_shutdown__), and the judge closes
        rows = ray.data.from_arrow(batch).map_batches(
            ClosingJudge,
            fn_constructor_kwargs={"name": "j", "log": str(tmp_path / "data.log"), **args}, batch_format="pyarrow",
            compute=ActorPoolStrategy(size=1), num_cpus=0.5).take_all()
        assert rows[0][S.score_column("j")] == [7.75, 7.75]
        assert _wait_for(tmp_path / "data.log", "closed") == ["closed"]
        # the eval's shared scorer actors end gracefully, and drop their scorer as Ray Data does
        conf = ScorerConf(name="j", cls="tests.closing_judge:ClosingJudge", pool=PoolConf(num_cpus=0.5))
        with scorer_hosts(conf, {"name": "j", "log": str(tmp_path / "hosts.log"), **args}) as hosts:
            out = ray.get(hosts.actors[0].score.remote(batch))
            assert out.column(S.score_column("j")).to_pylist() == [[7.75, 7.75]]
            assert not (tmp_path / "hosts.log").exists()  # open while the stage may still send batches
        assert _wait_for(tmp_path / "hosts.log", "closed") == ["closed"]


def odd_bodies(text, attempt, n_images):
    """200 answers of shapes a parser may not expect."""
    case = re.search(r"case:(\w+)", text).group(1)
    content = {"ok": None, "nulltext": [{"type": "text", "text": None}], "numtext": [{"type": "text", "text": 8}],
               "listtext": [{"type": "text", "text": ["x"]}]}[case]
    return (200, {}, rating(n_images) if content is None else json.dumps({"choices": [{"message": {"content": content}}]}).encode(), 0.0)


def test_an_odd_answer_body_is_malformed_not_a_crash(monkeypatch):
    # a text part holding null or a number crashed the actor (str.join), and with it the whole build
    monkeypatch.setenv(KEY_ENV, "k")
    cases = ["ok", "nulltext", "numtext", "listtext"]
    with JudgeServer(odd_bodies) as server:
        out = resolve("llm_judge")(name="j", **http_args(server.base_url)).score([_img((9, 9, 9))] * 4, [f"case:{c}" for c in cases])
        # the client's backstop: a parser failing on a body of a shape nobody foresaw costs that request only
        client = ChatClient(HttpJudgeConf(base_url=server.base_url, model="m"))
        msgs = R.openai_messages("case:ok", [_img((0, 0, 0))])
        for exc in (TypeError, KeyError, AttributeError, IndexError):
            def parse(body, exc=exc):
                raise exc("odd body")
            o = client.complete(msgs, parse)
            assert o.value is None and o.events == Counter(requests=1, malformed=1) and "malformed answer" in o.error
        client.close()
    assert out[""][0] == pytest.approx(7.75) and np.isnan(out[""][1:]).all()
    assert all(r.startswith("[missing] malformed answer") for r in out["rationale"][1:])
    assert R.sum_events(out["judge_events"]) == {"requests": 4, "ok": 1, "malformed": 3}


def test_extra_body_refuses_a_credential_field_without_echoing_it():
    pasted = "sk-abc" + "Q7" * 16
    for extra in ({"api_key": pasted}, {"headers": {"Authorization": f"Bearer {pasted}"}}, {"apiKey": pasted},
                  {"access_token": pasted}, {"auth": pasted}, {"headers": {"Cookie": pasted}}, {"db_passwd": pasted}):
        with pytest.raises(ValueError, match=r"args\.http\.extra_body: .* looks like a credential") as e:
            resolve("llm_judge").check_args("scorer 'j'", http_args("http://127.0.0.1:9/v1", extra_body=extra))
        assert pasted not in str(e.value)
    fine = {"max_completion_tokens": 9, "stop_token_ids": [1], "skip_special_tokens": True, "top_k": 5,
            "guided_json": {"properties": {"token": {"type": "string"}}}}
    resolve("llm_judge").check_args("scorer 'j'", http_args("http://127.0.0.1:9/v1", extra_body=fine))


def test_a_missing_key_variable_stops_a_stage_running_the_judge_on_a_local_ray(tmp_path, monkeypatch, capsys):
    from raypref.config import validate, write_run_meta
    from raypref.session import LOCAL_RAY_ENV

    for var in (KEY_ENV, "RAY_ADDRESS", LOCAL_RAY_ENV):
        monkeypatch.delenv(var, raising=False)
    judge = {"name": "j", "cls": "llm_judge", "args": http_args("http://127.0.0.1:9/v1")}

    def cfg(**ray):
        return validate({"output_dir": str(tmp_path / "run"), "ray": ray, "build": {"scorers": [judge]}})

    for stage in ("build", "relabel"):  # no Ray address: raypref starts one here, whose actors lack the key
        with pytest.raises(ValueError, match=f"^scorer 'j': judge API key: environment variable {KEY_ENV} is not set"):
            write_run_meta(cfg(), tmp_path / "run" / stage, stage)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv(LOCAL_RAY_ENV, "1")  # init_ray's mark wins: this Ray was started here
    with pytest.raises(ValueError, match=f"environment variable {KEY_ENV} is not set"):
        write_run_meta(cfg(), tmp_path / "run" / "build", "build")
    assert not (tmp_path / "run").exists()
    # a stage that does not run the judge needs no key
    assert (write_run_meta(cfg(), tmp_path / "run" / "train", "train") / "config.yaml").is_file()
    # joining a cluster, whose worker nodes may hold the variable: a warning, and the stage goes on
    monkeypatch.delenv(LOCAL_RAY_ENV)
    monkeypatch.delenv("RAY_ADDRESS")
    assert (write_run_meta(cfg(address="ray://head:10001"), tmp_path / "run" / "build", "build") / "config.yaml").is_file()
    assert f"[judge] warning: scorer 'j': judge API key: environment variable {KEY_ENV} is not set" in capsys.readouterr().out
    secret = "sk-" + "k3y" * 10
    monkeypatch.setenv(KEY_ENV, secret)
    write_run_meta(cfg(), tmp_path / "run" / "build", "build")
    assert secret not in capsys.readouterr().out + (tmp_path / "run" / "build" / "config.yaml").read_text()


def test_cli_build_without_the_key_variable_exits_2_before_ray(tmp_path, monkeypatch, capsys):
    from raypref.cli import main
    from raypref.session import LOCAL_RAY_ENV

    from conftest import tiny_config_dict

    for var in (KEY_ENV, "RAY_ADDRESS", LOCAL_RAY_ENV):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "p.txt").write_text("a red circle\n")
    judge = {"name": "j", "cls": "llm_judge", "args": http_args("http://127.0.0.1:9/v1")}
    d = tiny_config_dict(tmp_path / "run", tmp_path / "p.txt", scorers=[judge],
                         generators=[{"name": "r", "cls": "shapes_render", "num_samples": 2}])
    (tmp_path / "c.yaml").write_text(json.dumps(d))
    assert main(["build", "-c", str(tmp_path / "c.yaml")]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"raypref build: error: scorer 'j': judge API key: environment variable {KEY_ENV} is not set")
    assert "[ray]" not in out and LOCAL_RAY_ENV not in os.environ  # Ray was never started
    assert not list((tmp_path / "run").rglob("config.yaml"))


@pytest.mark.parametrize("stage", ["relabel", "accuracy", "eval"])
def test_a_stage_running_the_judge_without_its_key_variable_stops_before_ray(stage, tmp_path, monkeypatch):
    from raypref import session
    from raypref.config import validate
    from raypref.evaluate import run_eval
    from raypref.finetune import export_file
    from raypref.pref_accuracy import run_accuracy
    from raypref.relabel import run_relabel
    from tests.test_reward_model import synthetic_pairs

    for var in (KEY_ENV, "RAY_ADDRESS", session.LOCAL_RAY_ENV):
        monkeypatch.delenv(var, raising=False)

    def refuse(*a, **k):
        raise AssertionError("Ray was started before the judge's key variable was checked")

    monkeypatch.setattr(session, "init_ray", refuse)
    judge = {"name": "j", "cls": "llm_judge", "args": http_args("http://127.0.0.1:9/v1")}
    synthetic_pairs(tmp_path / "pairs", n_prompts=2)
    (tmp_path / "p.txt").write_text("a red circle\n")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / export_file("lora")).write_bytes(b"never read")
    d = {"output_dir": str(tmp_path / "run"),
         "relabel": {"input": str(tmp_path / "pairs" / "a"), "format": "raypref"},
         "accuracy": {"pairs": str(tmp_path / "pairs" / "a"), "format": "raypref", "scorers": [judge]},
         "build": {"scorers": [judge], "generators": [{"name": "r", "cls": "shapes_render", "num_samples": 2}]},
         "eval": {"prompts": str(tmp_path / "p.txt"), "scorer": "j", "lora": str(tmp_path / "lora")}}
    run = {"relabel": run_relabel, "accuracy": run_accuracy, "eval": run_eval}[stage]
    with pytest.raises(ValueError, match=f"^scorer 'j': judge API key: environment variable {KEY_ENV} is not set"):
        run(validate(d))
    assert not list((tmp_path / "run").rglob("config.yaml"))


@pytest.fixture
def ray_started(monkeypatch):
    """No judge key set, a local Ray to start, and init_ray raising this instead: how far a run gets before Ray."""
    from raypref import session

    for var in (KEY_ENV, "RAY_ADDRESS", session.LOCAL_RAY_ENV):
        monkeypatch.delenv(var, raising=False)

    class RayStarted(Exception):
        pass

    def started(*a, **k):
        raise RayStarted

    monkeypatch.setattr(session, "init_ray", started)
    return RayStarted


def test_an_accuracy_rerun_with_every_judge_score_stored_needs_no_key(tmp_path, ray_started):
    import pyarrow.parquet as pq

    from raypref.config import validate
    from raypref.pref_accuracy import run_accuracy, staged_pairs, stored_count
    from tests.test_reward_model import synthetic_pairs

    RayStarted = ray_started
    judge = {"name": "j", "cls": "llm_judge", "args": http_args("http://127.0.0.1:9/v1")}
    synthetic_pairs(tmp_path / "pairs", n_prompts=2)
    cfg = validate({"output_dir": str(tmp_path / "run"),
                    "accuracy": {"pairs": str(tmp_path / "pairs" / "a"), "format": "raypref", "scorers": [judge]}})
    out = cfg.stage_dir("accuracy")
    out.mkdir(parents=True)
    keys, _ = staged_pairs(cfg, out, images=False)  # what an earlier run, which had the key, left
    s = cfg.accuracy.scorers[0]
    assert stored_count(s, out, keys) == 0  # records the judge's settings
    rows = keys.column(S.IMPORT_ROW).to_pylist()
    (out / "scorers" / "j" / "scores").mkdir(parents=True)
    pq.write_table(pa.table({S.IMPORT_ROW: rows[:-1]}), out / "scorers" / "j" / "scores" / "part-0.parquet")
    # one pair left to score: the judge runs, so its key is still checked before Ray
    with pytest.raises(ValueError, match=f"^scorer 'j': judge API key: environment variable {KEY_ENV} is not set"):
        run_accuracy(cfg)
    pq.write_table(pa.table({S.IMPORT_ROW: rows[-1:]}), out / "scorers" / "j" / "scores" / "part-1.parquet")
    with pytest.raises(RayStarted):  # every pair scored: no judge actor runs, and no key is asked for
        run_accuracy(cfg)
    # another limit: which pairs it reads is known only once they are staged again, after the check
    more = validate({**cfg.model_dump(mode="json"), "accuracy": {**cfg.accuracy.model_dump(mode="json"), "limit": 1}})
    with pytest.raises(ValueError, match=f"environment variable {KEY_ENV} is not set"):
        run_accuracy(more)


def test_an_accuracy_rerun_stopped_for_the_judge_key_leaves_its_stored_scores(tmp_path, ray_started):
    # the check before Ray only reads: removing scores made with other settings (and setting aside a file a
    # crash cut short) waits for stored_count, once the run goes ahead; a rerun refused for the key keeps them
    import pyarrow.parquet as pq

    from raypref.config import validate
    from raypref.pref_accuracy import run_accuracy, staged_pairs, stored_count
    from tests.test_reward_model import synthetic_pairs

    RayStarted = ray_started
    synthetic_pairs(tmp_path / "pairs", n_prompts=2)

    def config(**http):
        judge = {"name": "j", "cls": "llm_judge", "args": http_args("http://127.0.0.1:9/v1", **http)}
        return validate({"output_dir": str(tmp_path / "run"),
                         "accuracy": {"pairs": str(tmp_path / "pairs" / "a"), "format": "raypref", "scorers": [judge]}})

    cfg = config()
    out = cfg.stage_dir("accuracy")
    out.mkdir(parents=True)
    keys, _ = staged_pairs(cfg, out, images=False)  # what an earlier run, which had the key, left
    assert stored_count(cfg.accuracy.scorers[0], out, keys) == 0  # records the judge's settings
    scores = out / "scorers" / "j" / "scores"
    scores.mkdir(parents=True)
    pq.write_table(pa.table({S.IMPORT_ROW: keys.column(S.IMPORT_ROW)}), scores / "part-0.parquet")

    def files():
        return {p.relative_to(out): p.read_bytes() for p in out.rglob("*")
                if p.is_file() and p.name not in ("config.yaml", "run_meta.json")}

    before = files()
    other = config(model="another-vlm")  # its scores are another judge's: it runs, and needs its key
    with pytest.raises(ValueError, match=f"^scorer 'j': judge API key: environment variable {KEY_ENV} is not set"):
        run_accuracy(other)
    assert (scores / "part-0.parquet").is_file() and files() == before
    (scores / "part-1.parquet").write_bytes(b"PAR1 cut short")
    before = files()
    with pytest.raises(RayStarted):  # every pair in a whole file, a retry count untracked: stored in full
        run_accuracy(config(max_retries=5))
    assert files() == before and not (out / "scorers" / "j" / "scores.torn").exists()
    assert stored_count(other.accuracy.scorers[0], out, keys) == 0 and not scores.exists()  # once Ray has started


def test_judge_config_errors_never_echo_a_key(monkeypatch):
    pasted = "sk-live-" + "x9" * 20
    with pytest.raises(ValueError, match=r"args\.http\.api_key_env: .*NAME of an environment variable") as e:
        resolve("llm_judge")(name="j", **http_args("http://127.0.0.1:9/v1", api_key_env=pasted))
    assert pasted not in str(e.value)
    with pytest.raises(ValueError, match=r"args\.http\.base_url: .*must not hold credentials") as e:
        resolve("llm_judge")(name="j", **http_args(f"https://user:{pasted}@api.example.com/v1", api_key_env=None))
    assert pasted not in str(e.value)
    with pytest.raises(ValueError, match=r"args\.http\.base_url: .*must not have a query string") as e:
        resolve("llm_judge")(name="j", **http_args(f"https://api.example.com/v1?key={pasted}", api_key_env=None))
    assert pasted not in str(e.value)
    for key_like in ("hf_" + "aB3" * 11, "gsk_" + "k9" * 24):  # keys of letters, digits and '_' alone
        with pytest.raises(ValueError, match=r"args\.http\.api_key_env: .*NAME of an environment variable") as e:
            resolve("llm_judge")(name="j", **http_args("http://127.0.0.1:9/v1", api_key_env=key_like))
        assert key_like not in str(e.value)
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=f"environment variable {KEY_ENV} is not set"):
        resolve("llm_judge")(name="j", **http_args("http://127.0.0.1:9/v1"))
    with pytest.raises(ValueError, match=r"args\.bogus: unknown key"):
        resolve("llm_judge")(name="j", bogus=1, **http_args("http://127.0.0.1:9/v1"))
    with pytest.raises(ValueError, match="backend 'http' needs an 'http' section"):
        resolve("llm_judge")(name="j", backend="http")


def test_no_stage_writes_a_config_holding_a_pasted_key(tmp_path):
    # every stage writes its resolved config through write_run_meta, also those that never run the judge
    # (train, eval, a sweep before its first stage): the judge's own check runs there first
    from raypref.config import validate, write_run_meta

    pasted = "sk-live-" + "x9" * 20
    for args in (http_args("http://127.0.0.1:9/v1", api_key_env=pasted),
                 http_args(f"https://user:{pasted}@api.example.com/v1", api_key_env=None)):
        for where in ("build", "accuracy"):
            cfg = validate({"output_dir": str(tmp_path / "run"), where: {"scorers": [{"name": "j", "cls": "llm_judge", "args": args}]}})
            with pytest.raises(ValueError, match=r"scorer 'j': invalid llm_judge args\n  args\.http\.") as e:
                write_run_meta(cfg, tmp_path / "run" / "train", "train")
            assert pasted not in str(e.value)
    assert not (tmp_path / "run").exists()
    ok = validate({"output_dir": str(tmp_path / "run"), "build": {"scorers": [{"name": "j", "cls": "llm_judge",
                                                                              "args": http_args("http://127.0.0.1:9/v1")}]}})
    assert (write_run_meta(ok, tmp_path / "run" / "train", "train") / "config.yaml").is_file()


def test_request_body_fields_for_servers_that_differ():
    msgs = [{"role": "user", "content": "hi"}]
    plain = ChatClient(HttpJudgeConf(base_url="http://127.0.0.1:9/v1", model="m"))._body(msgs)
    assert plain == {"model": "m", "messages": msgs, "max_tokens": 512, "temperature": 0.0}
    # OpenAI's reasoning models: the cap under max_completion_tokens, and no temperature
    reasoning = HttpJudgeConf(base_url="http://127.0.0.1:9/v1", model="o", max_tokens_key="max_completion_tokens",
                              temperature=None, max_tokens=64, json_mode=True)
    assert ChatClient(reasoning)._body(msgs) == {"model": "o", "messages": msgs, "max_completion_tokens": 64,
                                                 "response_format": {"type": "json_object"}}


def test_a_build_with_a_pasted_key_stops_before_it_writes_its_config(tmp_path):
    from raypref.build import run_build
    from raypref.config import validate

    from conftest import tiny_config_dict

    pasted = "hf_" + "aB3" * 11
    (tmp_path / "p.txt").write_text("a red circle\n")
    judge = {"name": "j", "cls": "llm_judge", "args": http_args("http://127.0.0.1:9/v1", api_key_env=pasted)}
    cfg = validate(tiny_config_dict(tmp_path / "run", tmp_path / "p.txt", scorers=[judge]))
    with pytest.raises(ValueError, match=r"scorer 'j': invalid llm_judge args\n.*api_key_env") as e:
        run_build(cfg)
    assert pasted not in str(e.value)
    assert not list((tmp_path / "run").rglob("config.yaml"))  # nothing on disk holds the key


# ---------------------------------------------------------------- local transformers backend


def test_local_judge_on_a_tiny_llava_counts_garbage_as_malformed(tmp_path):
    from raypref.tiny_judge import build_tiny_llava

    path = build_tiny_llava(tmp_path / "llava")
    judge = resolve("llm_judge")(name="lj", model=str(path), backend="local", mode="pairwise", max_new_tokens=8, batch_size=4)
    prompts = ["a red circle"] * 3 + ["two green stars"]
    out = judge.score([_img((60 * i, 0, 0)) for i in range(4)], prompts)
    # pairs (0,1), (2,0) and a lone image 3, in one padded generate call: random weights answer noise
    assert R.sum_events(out["judge_events"]) == {"malformed": 3, "requests": 3}
    assert np.isnan(out[""]).all() and all(r.startswith("[missing] malformed answer") for r in out["rationale"])


def test_local_judge_loads_the_model_its_ref_resolves_to(tmp_path, monkeypatch):
    # a tiny: ref (as other scorers take it) is resolved to its path; the loader cannot read the ref itself
    monkeypatch.setenv("RAYPREF_CACHE", str(tmp_path / "cache"))
    judge = resolve("llm_judge")(name="lj", model="tiny:llava", backend="local", max_new_tokens=4)
    assert judge.client.model.config.vision_config is not None
