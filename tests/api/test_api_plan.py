"""The plan a request becomes (api/plan.py), in-process on the tiny checkpoint: the prompt, each
choice's seed and budget, the tokens each mode bans, the image start and the thought's budget."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from imagemini.api.errors import APIError
from imagemini.api.plan import CompletionPlan, plan_completion
from imagemini.api.schemas import ChatCompletionRequest
from imagemini.api.settings import ServerSettings
from imagemini.api.state import ServerState
from imagemini.engine.engine import Engine, EngineConfig

HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def state(tiny_checkpoint) -> ServerState:
    """A ServerState built as the server builds it, from an engine's parts instead of its process
    (planning never reaches the engine)."""
    engine = Engine.from_checkpoint(tiny_checkpoint, EngineConfig(dtype="float32"))
    frontend = SimpleNamespace(tokenizer=engine.tokenizer, model=engine.model, grammars=engine.grammars)
    stand_in = SimpleNamespace(frontend=frontend, tokenizer=engine.tokenizer, limits=engine.limits)
    return ServerState.build(tiny_checkpoint, stand_in, ServerSettings(), None)


def plan(state: ServerState, **fields) -> CompletionPlan:
    request = ChatCompletionRequest.model_validate({"model": state.card.id, "messages": HELLO, **fields})
    return asyncio.run(plan_completion(state, request))


def test_every_choice_has_its_own_seed_and_the_whole_budget(state):
    tok = state.prompts.tokenizer
    got = plan(state, n=3, seed=42, max_completion_tokens=20, temperature=0.5)
    assert got.prompt_ids == tok.encode(tok.render_chat(HELLO, add_generation_prompt=True))
    seeds = [p.seed for p in got.params]
    assert seeds[0] == 42 and len(set(seeds)) == 3
    assert seeds == [p.seed for p in plan(state, n=3, seed=42, max_completion_tokens=20).params]  # derived, not drawn
    assert {(p.max_tokens, p.temperature, p.image_output, p.reasoning_budget) for p in got.params} == {(20, 0.5, False, None)}
    # Text mode on a checkpoint that thinks: no image can start, and no thought either.
    special = tok.special
    assert set(got.params[0].banned_token_ids) == {special.boi, special.eoi, special.image, *state.limits.think_ids}


def test_an_image_answer_starts_drawing_with_room_for_the_image(state):
    image = state.limits.image
    got = plan(state, modalities=["image"], seed=1)
    assert image.enabled and got.prompt_ids[-len(image.start_ids):] == list(image.start_ids)
    assert got.prompt_ids[-1] == state.prompts.tokenizer.special.boi
    room = state.limits.max_sequence_tokens - len(got.prompt_ids)
    assert [p.max_tokens for p in got.params] == [min(room, state.limits.default_max_tokens + image.tokens_per_image)]
    params = got.params[0]
    assert params.image_output and params.guidance_scale == image.guidance_scale
    assert state.prompts.tokenizer.special.boi not in params.banned_token_ids  # the model may open another image


def test_a_thought_gets_its_share_of_the_budget(state):
    got = plan(state, reasoning={"effort": "low"}, max_completion_tokens=100)
    assert got.prompt_ids[-1] == state.prompts.tokenizer.special.think_start  # the template opened the thought
    assert got.reasoning.shows_thought and got.params[0].reasoning_budget == 20  # low = 20%
    assert not set(state.limits.think_ids) & set(got.params[0].banned_token_ids)


def test_a_request_with_two_problems_gets_the_first_check_s_error(state):
    with pytest.raises(APIError) as exc:  # an unsupported field is checked before the model name
        plan(state, model="no-such-model", tools=[{"type": "function"}])
    assert (exc.value.status, exc.value.param) == (400, "tools")
    with pytest.raises(APIError) as exc:  # the model name before the budget
        plan(state, model="no-such-model", max_completion_tokens=10**9)
    assert (exc.value.status, exc.value.param) == (404, "model")
