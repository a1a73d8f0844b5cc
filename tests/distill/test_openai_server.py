"""The loopback OpenAI-compatible server (tests/openai_server.py) against the real `openai` client
and raw httpx: the answer rule, log probabilities, auth, every fault switch, concurrency, stats."""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.error

import httpx2
import jsonschema
import openai
import pytest

from distill.config import ClassificationTask, ExtractionTask, GenerationTask
from distill.prompts import generation_messages, system_text
from tests.openai_fixture import running_openai_server

KEY = "sk-cascadekit-test-0123456789abcdef"
MODEL = "rule-teacher"
TASK = ClassificationTask(
    name="intent",
    instruction="Classify the customer's message.",
    labels=[
        {"name": "card_lost", "description": "my card is lost or stolen"},
        {"name": "card_arrival", "description": "when will my new card arrive"},
        {"name": "refund", "description": "I want my money back"},
        "other",
    ],
    examples=[{"text": "where is my refund", "label": "refund"}],
)
LOST = "I lost my card yesterday, please block it"  # card_lost 2 words, card_arrival 1, others 0
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "amount": {"type": "number"},
        "items": {"type": "integer", "minimum": 1},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "channel": {"enum": ["email", "phone"]},
        "address": {"$ref": "#/$defs/address"},
    },
    "required": ["name", "amount", "items", "urgent", "tags", "channel", "address"],
    "additionalProperties": False,
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": ["integer", "null"]}},
            "required": ["city", "zip"],
        }
    },
}


def classify_messages(text: str, system: str | None = None) -> list[dict[str, str]]:
    """What cascadekit's openai teacher sends: system, few-shot turns, then the input."""
    messages = [{"role": "system", "content": system or system_text(TASK)}]
    for example in TASK.examples:
        messages += [
            {"role": "user", "content": example.text},
            {"role": "assistant", "content": example.label},
        ]
    return [*messages, {"role": "user", "content": text}]


def completion_body(text: str, **fields) -> dict:
    return {"model": MODEL, "messages": classify_messages(text), **fields}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_openai_server(tmp_path_factory.mktemp("openai"), api_key=KEY) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(server):
    """Each test starts with no faults and zeroed counters."""
    server.set_faults()
    server.reset()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=10)


@pytest.fixture
def http(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx2.Client(
        base_url=server.base_url, headers=headers, timeout=10, trust_env=False
    ) as http_client:
        yield http_client


# ── answers ──────────────────────────────────────────────────────────────────────────────
def test_classification_first_token_logprobs_give_a_distribution_over_the_labels(client):
    response = client.chat.completions.create(
        model=MODEL,
        messages=classify_messages(LOST),
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=20,
    )
    choice = response.choices[0]
    assert choice.message.content == "card_lost"
    assert choice.finish_reason == "stop"
    assert response.object == "chat.completion" and response.model == MODEL
    tokens = choice.logprobs.content
    assert [t.token for t in tokens] == ["card", "_lost"]
    assert tokens[0].bytes == list(b"card")
    first = {alt.token: math.exp(alt.logprob) for alt in tokens[0].top_logprobs}
    assert list(first) == ["card", "refund", "other"]  # first tokens, most probable first
    assert sum(first.values()) == pytest.approx(1)
    assert math.exp(tokens[0].logprob) == pytest.approx(first["card"])
    # "card" is shared: the second token's alternatives split its mass.
    second = {alt.token: math.exp(alt.logprob) for alt in tokens[1].top_logprobs}
    recovered = {
        "card_lost": first["card"] * second["_lost"],
        "card_arrival": first["card"] * second["_arrival"],
        "refund": first["refund"],
        "other": first["other"],
    }
    weights = {"card_lost": math.e**2, "card_arrival": math.e, "refund": 1.0, "other": 1.0}
    expected = {label: w / sum(weights.values()) for label, w in weights.items()}
    assert recovered == pytest.approx(expected)

    cut = client.chat.completions.create(
        model=MODEL, messages=classify_messages(LOST), logprobs=True, top_logprobs=1
    )
    assert [len(t.top_logprobs) for t in cut.choices[0].logprobs.content] == [1, 1]


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Could I get my money back please", "refund"),
        ("When does the new card arrive", "card_arrival"),
        ("something else entirely", "card_lost"),  # no shared word: a tie, the first label
        ("this is about other things", "other"),
    ],
)
def test_classification_rule_picks_the_label_sharing_most_words(http, text, label):
    reply = http.post("/chat/completions", json=completion_body(text)).json()
    assert reply["choices"][0]["message"]["content"] == label
    assert reply["choices"][0]["logprobs"] is None


def test_classification_rationale_and_max_tokens(http):
    system = system_text(TASK) + (
        "\nThen, on a second line, write 'Reason:' and one short sentence explaining the label."
    )
    body = {"model": MODEL, "messages": classify_messages(LOST, system)}
    content = http.post("/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert content == "card_lost\nReason: the input mentions card, lost"
    choice = http.post("/chat/completions", json=completion_body(LOST, max_tokens=1)).json()
    assert choice["choices"][0]["message"]["content"] == "card"
    assert choice["choices"][0]["finish_reason"] == "length"


def test_extraction_answer_validates_against_the_schema(client):
    task = ExtractionTask(
        name="claims", kind="extraction", instruction="Extract the claim.", json_schema=SCHEMA
    )
    text = "Please refund 42.50 euros for 3 items to Maria in Berlin"
    response = client.chat.completions.create(
        model=MODEL,
        messages=generation_messages(task, text),
        response_format={"type": "json_object"},
    )
    answer = json.loads(response.choices[0].message.content)
    jsonschema.validate(answer, SCHEMA)
    assert answer == {
        "name": "Please",
        "amount": 42.5,
        "items": 42,
        "urgent": False,
        "tags": [],
        "channel": "email",
        "address": {"city": "Please", "zip": 42},
    }


def test_other_prompts_echo_the_first_words_with_usage(client):
    task = GenerationTask(name="summary", kind="generation", instruction="Summarise the text.")
    text = "one two three four five six seven eight nine ten"
    messages = generation_messages(task, text)
    response = client.chat.completions.create(model=MODEL, messages=messages)
    assert response.choices[0].message.content == "one two three four five six seven eight"
    usage = response.usage
    assert usage.prompt_tokens == (3 + 4) + (10 + 4)
    assert usage.completion_tokens == 8  # "one", " two", ... " eight"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_models_and_request_errors(client, http):
    assert [m.id for m in client.models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nope", messages=classify_messages(LOST))
    assert caught.value.code == "model_not_found"
    reply = http.post("/chat/completions", json={"model": MODEL, "messages": []})
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert (
        http.post("/chat/completions", json=completion_body(LOST, stream=True)).status_code == 400
    )


def test_a_wrong_or_missing_key_gets_401(server, http):
    wrong = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model=MODEL, messages=classify_messages(LOST))
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    reply = httpx2.post(
        f"{server.base_url}/chat/completions", json=completion_body(LOST), trust_env=False
    )
    assert reply.status_code == 401
    assert reply.json()["error"] == {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    stats = server.stats()
    assert stats["unauthorized"] == 2 and stats["completion_requests"] == 0
    assert KEY not in server.log_path.read_text()


# ── faults ───────────────────────────────────────────────────────────────────────────────
def test_rate_limit_every_n_answers_429_with_retry_after(server, http):
    server.set_faults(rate_limit_every=2, retry_after_s=7)
    codes = [http.post("/chat/completions", json=completion_body(LOST)) for _ in range(4)]
    assert [r.status_code for r in codes] == [200, 429, 200, 429]
    assert codes[1].headers["retry-after"] == "7"
    assert codes[1].json()["error"]["code"] == "rate_limit_exceeded"
    assert server.stats()["faults"] == {"rate_limit": 2}
    server.set_faults(rate_limit_every=1, retry_after_s=0.25, error_500_every=0)
    reply = http.post("/chat/completions", json=completion_body(LOST))
    assert reply.status_code == 429 and reply.headers["retry-after"] == "0.25"


def test_the_openai_client_retries_through_a_429(server):
    server.set_faults(rate_limit_every=2, retry_after_s=1)
    retrying = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=2)
    for text in ("first message", LOST):
        retrying.chat.completions.create(model=MODEL, messages=classify_messages(text))
    assert server.calls_for("first message") == 1
    assert server.calls_for(LOST) == 2  # 429, then the retry
    stats = server.stats()
    assert stats["completions"] == 2 and sum(stats["completed_by_input"].values()) == 2


def test_error_500_and_fail_switches(server, client, http):
    server.set_faults(error_500_every=1)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=classify_messages(LOST))
    server.set_faults(fail_inputs=["poison"])
    assert http.post("/chat/completions", json=completion_body("a poison pill")).status_code == 500
    assert http.post("/chat/completions", json=completion_body(LOST)).status_code == 200
    server.set_faults(fail_all=True)
    assert http.post("/chat/completions", json=completion_body(LOST)).status_code == 500
    assert server.stats()["faults"] == {"error_500": 1, "fail_inputs": 1, "fail_all": 1}


def test_drop_closes_the_connection_without_a_response(server, client, http):
    server.set_faults(drop_every=1)
    with pytest.raises(httpx2.RemoteProtocolError):
        http.post("/chat/completions", json=completion_body(LOST))
    with pytest.raises(openai.APIConnectionError) as caught:
        client.chat.completions.create(model=MODEL, messages=classify_messages(LOST))
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert server.stats()["faults"] == {"drop": 2}


def test_malformed_answers_200_with_a_body_that_is_not_json(server, http):
    server.set_faults(malformed_every=1)
    reply = http.post("/chat/completions", json=completion_body(LOST))
    assert reply.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        reply.json()
    assert server.stats()["completions"] == 0


def test_slow_exceeds_a_short_client_timeout(server, client, http):
    server.set_faults(slow_every=1, slow_ms=1500)
    with pytest.raises(httpx2.ReadTimeout):
        http.post("/chat/completions", json=completion_body(LOST), timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(
            model=MODEL, messages=classify_messages(LOST)
        )
    assert server.stats()["faults"] == {"slow": 2}


def test_bad_label_answers_a_label_outside_the_set(server, http):
    server.set_faults(bad_label_every=2)
    answers = [http.post("/chat/completions", json=completion_body(LOST)).json() for _ in range(2)]
    assert [a["choices"][0]["message"]["content"] for a in answers] == ["card_lost", "not_a_label"]
    assert server.stats()["faults"] == {"bad_label": 1}


def test_unknown_fault_switch_is_refused(server):
    with pytest.raises(urllib.error.HTTPError) as caught:
        server.set_faults(drop_evry=1)
    assert caught.value.code == 400


# ── stats and concurrency ────────────────────────────────────────────────────────────────
def test_stats_count_calls_per_input_until_reset(server, http):
    for text in (LOST, LOST, LOST, "another input"):
        http.post("/chat/completions", json=completion_body(text))
    assert server.calls_for(LOST) == 3 and server.calls_for("another input") == 1
    stats = server.stats()
    assert stats["requests"] == stats["completion_requests"] == stats["completions"] == 4
    server.reset()
    assert server.calls_for(LOST) == 0 and server.stats()["requests"] == 0


def test_64_concurrent_requests_overlap_and_stats_persist(tmp_path):
    texts = [f"message number {i} about my card" for i in range(64)]

    async def ask_all(base_url: str) -> None:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="unused") as client:
            await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="fast", messages=[{"role": "user", "content": t}]
                    )
                    for t in texts
                )
            )

    state = tmp_path / "state"
    with running_openai_server(
        tmp_path,
        latency_ms=200,
        model="fast",
        state_dir=state,
        fail_inputs=["poison"],
        retry_after_s=0.5,
        bad_label_every=0,
    ) as server:
        switches = httpx2.get(f"{server.url}/_test/faults", trust_env=False).json()
        assert switches["fail_inputs"] == ["poison"] and switches["retry_after_s"] == 0.5
        started = time.monotonic()
        asyncio.run(ask_all(server.base_url))
        elapsed_s = time.monotonic() - started
        stats = server.stats()
    assert elapsed_s < 2.0, f"64 requests of 200 ms took {elapsed_s:.2f} s"
    assert stats["in_flight_max"] >= 32
    assert stats["completions"] == 64 and set(stats["by_input"].values()) == {1}
    assert json.loads((state / "stats.json").read_text()) == stats
    with running_openai_server(tmp_path, model="fast", state_dir=state) as restarted:
        assert restarted.stats()["completions"] == 64


def test_fixture_reports_a_server_that_does_not_start(tmp_path):
    with (
        pytest.raises(RuntimeError, match=r"did not print READY(?s:.*)unrecognized arguments"),
        running_openai_server(tmp_path, no_such_switch=1),
    ):
        pass
