"""`response_format`: from the request's field to the compiled grammar the answer is decoded under.

    grammar = await response_grammar(request, grammars)    # compiled in a worker thread; None for text

`{"type": "json_object"}` is any JSON object; `{"type": "json_schema",
"json_schema": {"name", "description", "schema", "strict"}}` a JSON value valid under `schema`
(read as JSON Schema 2020-12; an absent schema is any JSON value). The answer is decoded under
the schema's grammar (llguidance, engine/structured.py) and ends as soon as the value is
complete (finish_reason "stop"). It always parses: as the token budget runs out, the engine
steers the answer onto a short closing of what is open (engine/closing.py), and the value then
ends with finish_reason "length". A budget too small for even the shortest valid answer the
engine finds is a 400 `max_tokens_too_small` naming that minimum (`check_answer_budget`). A
`stop` string that matches inside the value still cuts it (stop strings apply to the answer as
usual). With `strict: true`, and always for json_object, a schema feature the grammar engine
cannot enforce (uniqueItems, contains, not, if/then/else, dependentRequired, propertyNames,
unknown formats, look-around in patterns, overlapping oneOf, ...) is a 400
`unsupported_schema_feature` whose message names it; an invalid schema is a 400
`invalid_json_schema`. Without strict, those features are ignored (best effort, as OpenAI's
non-strict mode) and everything else is enforced. Compiled grammars are cached (LRU, by hash).
"""

from __future__ import annotations

import asyncio
import re

import jsonschema

from imagemini.engine.structured import Grammar, GrammarCompiler, GrammarError, check_json_schema, json_grammar

from .errors import bad_request
from .schemas import ChatCompletionRequest

SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SCHEMA_PARAM = "response_format.json_schema.schema"


def _compile(compiler: GrammarCompiler, schema: dict, strict: bool) -> Grammar:
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        message = f"{SCHEMA_PARAM}: invalid JSON Schema at {where}: {exc.message}"
        raise bad_request(message, SCHEMA_PARAM, "invalid_json_schema") from None
    try:
        check_json_schema(schema, strict)
        return compiler.compile(json_grammar(schema, strict))
    except GrammarError as exc:
        hint = " (strict mode refuses every schema feature the grammar engine cannot enforce)" if strict else ""
        raise bad_request(f"{SCHEMA_PARAM}: {exc}{hint}", SCHEMA_PARAM, "unsupported_schema_feature") from None


def format_schema(request: ChatCompletionRequest) -> tuple[dict, bool] | None:
    """(schema, strict) of the request's response_format; None for plain text. Checks the name."""
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if request.wants_image:
        raise bad_request(
            "response_format json_object / json_schema cannot be combined with image output (modalities)",
            "response_format", "unsupported_value",
        )
    if fmt.type == "json_object":
        return {"type": "object"}, True
    spec = fmt.json_schema
    if not SCHEMA_NAME.match(spec.name):
        raise bad_request(
            "response_format.json_schema.name must be 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-'",
            "response_format.json_schema.name", "invalid_value",
        )
    return (spec.schema_ if spec.schema_ is not None else {}), bool(spec.strict)


def check_answer_budget(request: ChatCompletionRequest, grammar: Grammar | None, answer_budget: int, thought: int) -> None:
    """The answer's budget (the completion's, less the thought's) must hold the shortest valid answer."""
    if grammar is None or grammar.min_tokens is None or grammar.min_tokens <= answer_budget:
        return
    param = "max_completion_tokens" if request.max_completion_tokens is not None or request.max_tokens is None else "max_tokens"
    after_thought = f" after a thought of up to {thought} tokens" if thought else ""
    raise bad_request(
        f"response_format: the shortest answer valid under the schema takes {grammar.min_tokens} tokens, but {param} "
        f"leaves the answer {answer_budget}{after_thought}: raise {param} to at least {grammar.min_tokens + thought}",
        param, "max_tokens_too_small",
    )


async def response_grammar(request: ChatCompletionRequest, compiler: GrammarCompiler) -> Grammar | None:
    """The compiled grammar of the request's response_format, off the event loop (a large schema
    never stalls other requests); None for text."""
    spec = format_schema(request)
    if spec is None:
        return None
    return await asyncio.to_thread(_compile, compiler, *spec)

