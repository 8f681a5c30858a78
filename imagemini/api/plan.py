"""One chat request -> one CompletionPlan: everything the engine will run, decided in one pass.

    plan = await plan_completion(state, request)    # or the 400/404/413 the request gets
    plan.prompt_ids, plan.images                    # the prompt: one image token run per image
    plan.params                                     # one SamplingParams per choice, each with its seed

The steps, in the order that decides which error a request with several problems gets:
1. cross-field rules and unsupported features (sampling.py), then the model name;
2. reasoning: thinking on or off (reasoning.py);
3. response_format: its grammar, compiled in a worker thread (response_format.py);
4. the messages: parsed (chat.py), their images and files read (media.py), rendered through the
   chat template and encoded, each image expanded into its placeholder run (processor.py);
5. the image start, when the answer starts with an image (models/image_output.py);
6. the budgets: completion tokens, the thought's share, room for the shortest valid structured
   answer, room for a whole image;
7. one SamplingParams per choice: its seed, banned tokens, grammar and thought budget.
Nothing here reaches the engine; routes.py submits the plan.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from imagemini.engine.params import SamplingParams

from .chat import Message, has_media, parse_messages, resolve_messages, too_many_images
from .errors import model_not_found
from .media import InputImage
from .reasoning import ReasoningPlan, reasoning_plan
from .response_format import check_answer_budget, response_grammar
from .sampling import check_request, check_room_for_image, choice_params, completion_budget, draws_first
from .schemas import ChatCompletionRequest
from .state import ServerState


@dataclass(frozen=True)
class CompletionPlan:
    """A request checked against this checkpoint, ready for the engine."""

    prompt_ids: list[int]  # the prompt, image start included
    images: list[InputImage]  # the prompt's images, in order (encoded when the plan is submitted)
    params: list[SamplingParams]  # one per choice
    reasoning: ReasoningPlan

    @property
    def num_choices(self) -> int:
        return len(self.params)


async def plan_completion(state: ServerState, request: ChatCompletionRequest) -> CompletionPlan:
    limits, card = state.limits, state.card
    check_request(request, limits)
    if not card.matches(request.model):
        raise model_not_found(request.model, param="model")
    reasoning = reasoning_plan(request, card)
    grammar = await response_grammar(request, state.grammars)
    messages = parse_messages(request.messages, accept_images="image" in card.inputs, accept_files="file" in card.inputs)
    ids, images = await encode_prompt(state, messages, reasoning)
    drawing_first = draws_first(request, limits.image)
    if drawing_first:
        ids = ids + list(limits.image.start_ids)  # the answer starts with an image
    reasoning.check_draws_first(drawing_first)
    budget = completion_budget(request, len(ids), limits)
    budget, thought = reasoning.budgets(request, budget, len(ids), limits)
    check_answer_budget(request, grammar, budget - thought, thought)
    if drawing_first:
        check_room_for_image(request, budget, len(ids), limits)
    params = choice_params(request, budget, limits, grammar, thought)
    return CompletionPlan(ids, images, params, reasoning)


async def encode_prompt(
    state: ServerState, messages: list[Message], reasoning: ReasoningPlan
) -> tuple[list[int], list[InputImage]]:
    """Prompt ids and images. Reading media (base64, downloads, PDFs) runs in a worker thread,
    a bounded number of requests at once; a text-only prompt is encoded on the spot."""
    max_images = state.settings.max_images

    def encode() -> tuple[list[int], list[InputImage]]:
        resolved = resolve_messages(messages, state.media, max_images)
        ids, images = state.prompts.encode(resolved, **reasoning.template_options)
        if len(images) > max_images:
            raise too_many_images(len(images), max_images)
        return state.vision.with_echo(state.processor.expand_images(ids), images), images

    if not has_media(messages):
        return encode()
    async with state.media_slots:
        return await asyncio.to_thread(encode)
