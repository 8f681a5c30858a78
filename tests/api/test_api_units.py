"""The API's pieces without a server process: param paths, seeds, prices, settings, and the
engine process's loop when a step raises."""

from __future__ import annotations

import multiprocessing
import threading
from dataclasses import replace
from decimal import Decimal

import pytest
from apitest import nullable_to_anyof
from pydantic import ValidationError

from imagemini.api.errors import from_validation_error, param_path
from imagemini.api.model_card import Prices, _usd
from imagemini.api.sampling import choice_seed
from imagemini.api.schemas import ChatCompletionRequest
from imagemini.api.settings import ServerSettings
from imagemini.engine.async_engine import serve_engine
from imagemini.engine.engine import Engine, EngineConfig
from imagemini.engine.params import SamplingParams


def test_param_path_follows_the_request_not_pydantic_tags():
    data = {"messages": [{"role": "user", "content": [{"type": "text"}]}]}
    assert param_path(("messages", 0, "content", "list[tagged-union[A,B]]", 0, "text", "text"), data) == "messages[0].content[0].text"
    assert param_path(("temperature",), {"temperature": 3}) == "temperature"
    assert param_path(("model",), {}) == "model"  # missing field: named anyway
    assert param_path((), {}) is None


def test_validation_error_names_the_most_specific_problem():
    data = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate(data)
    error = from_validation_error(exc.value, data)
    assert (error.status, error.param, error.code) == (400, "stop", "too_long")  # not "should be a string"


def test_choice_seeds():
    assert choice_seed(42, 0) == 42 and choice_seed(None, 3) is None
    seeds = [choice_seed(42, i) for i in range(1, 5)]
    assert len(set(seeds)) == 4 and 42 not in seeds
    assert seeds == [choice_seed(42, i) for i in range(1, 5)]  # derived, not random
    assert all(-(2**63) <= s < 2**63 for s in seeds)


def test_prices_and_cost():
    prices = Prices.from_card({})
    assert (_usd(prices.prompt), _usd(prices.completion), _usd(prices.request)) == ("0.0000025", "0.000002", "0")
    assert prices.cost(1000, 500) == pytest.approx(1000 * 2.5e-6 + 500 * 2e-6, rel=1e-12)
    custom = Prices.from_card({"pricing_usd_per_million_tokens": {"prompt": 0.1}, "pricing_usd_per_request": 0.01})
    assert custom.prompt == Decimal("0.0000001") and custom.cost(0, 0) == pytest.approx(0.01)


def test_settings_from_env():
    s = ServerSettings.from_env({"IMAGEMINI_MAX_BODY_BYTES": "4096", "IMAGEMINI_SHUTDOWN_GRACE_S": "0.5"})
    assert (s.max_body_bytes, s.shutdown_grace_s, s.default_max_tokens) == (4096, 0.5, 4096)
    with pytest.raises(ValueError):
        ServerSettings.from_env({"IMAGEMINI_MAX_BODY_BYTES": "lots"})
    with pytest.raises(ValueError):
        ServerSettings(max_body_bytes=10)


def test_nullable_rewrite():
    schema = {"type": "object", "properties": {"x": {"type": "string", "nullable": True}}}
    assert nullable_to_anyof(schema)["properties"]["x"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}


# --- engine failures -------------------------------------------------------------------------------------
def test_a_failing_engine_step_ends_every_request_with_an_error(tiny_checkpoint):
    """The engine process's loop (serve_engine), run here on a thread: a step that raises ends
    every request in flight with finish_reason "error" and a generic message, and the loop goes on."""
    engine = Engine.from_checkpoint(tiny_checkpoint, EngineConfig(dtype="float32"))
    real_step, calls = engine.step, []

    def failing_step():
        calls.append(1)
        if len(calls) == 4:  # prefill, two tokens, then the failure
            raise RuntimeError("secret internal detail")
        return real_step()

    engine.step = failing_step
    ours, theirs = multiprocessing.Pipe(duplex=True)
    loop = threading.Thread(target=serve_engine, args=(engine, theirs), daemon=True)
    loop.start()
    params = SamplingParams(max_tokens=50, temperature=0, logit_bias={engine.tokenizer.special.eos: -100.0})
    prompt = engine.tokenizer.encode("Hi")
    for request_id in ("a", "b"):
        ours.send(("add", request_id, prompt, params, None, None))
    finals = {}
    while len(finals) < 2:
        assert ours.poll(30), "the engine loop went silent"
        _, outputs, _ = ours.recv()
        finals.update({o.request_id: o for o in outputs if o.finished})
    assert {o.finish_reason for o in finals.values()} == {"error"}
    assert all("secret" not in o.error and "internal error" in o.error for o in finals.values())
    ours.send(("add", "c", prompt, replace(params, max_tokens=3), None, None))  # still serving
    got = []
    while not (got and got[-1].finished):
        assert ours.poll(30)
        got += ours.recv()[1]
    assert got[-1].finish_reason == "length" and sum(len(o.token_ids) for o in got) == 3
    ours.send(("stop",))
    loop.join(10)
    assert not loop.is_alive()
