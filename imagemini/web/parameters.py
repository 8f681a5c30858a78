"""The model page's parameter table, made from the pydantic models that validate requests.

    rows = parameter_rows(card.supported_parameters, defaults)   # [Row(name, type, range, default, effect)]

Name, type and range come from `ChatCompletionRequest` (api/schemas.py): its fields, their
annotations and their constraints (Ge/Gt/Le/Lt, lengths, Literal choices), nested models as
`parent.child` rows. Which rows: the transport fields every request carries, and the card's
`supported_parameters` (exactly what this checkpoint honours). What a field does and its default
when absent (server behaviour, not schema) are in EFFECTS below; a row without an entry there
says so, and tests/web/test_page.py fails on it.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from imagemini.api.schemas import ChatCompletionRequest

TRANSPORT = ("model", "messages", "stream")
MISSING_EFFECT = "(not documented)"

# name -> (default when absent, what it does). "{...}" fields are filled from the live server.
EFFECTS: dict[str, tuple[str, str]] = {
    "model": ("required", "This model's id, or its last path segment."),
    "messages": ("required", "The conversation: system, developer, user and assistant messages. User content may hold "
                 "image_url and file parts; an assistant message may carry the images its answer returned."),
    "stream": ("false", "Server-Sent Events: text as it is written, usage in the last chunk."),
    "max_completion_tokens": ("the context left, at most {default_max_tokens}",
                              "Most tokens the answer may have (a drawn image counts its codes)."),
    "max_tokens": ("as max_completion_tokens", "Older name of max_completion_tokens."),
    "temperature": ("1 (images: {image_temperature})", "Sampling temperature; 0 is greedy."),
    "top_p": ("1 (images: {image_top_p})", "Nucleus sampling: keep the smallest set of tokens with this much probability."),
    "frequency_penalty": ("0", "Lowers tokens by how often they already appear in the answer."),
    "presence_penalty": ("0", "Lowers tokens that already appear in the answer."),
    "logit_bias": ("none", "Added to the logits of the given token ids."),
    "logprobs": ("false", "Return each token's log probability."),
    "top_logprobs": ("0", "Alternatives returned per token (needs logprobs)."),
    "stop": ("none", "Text at which the answer ends (not included)."),
    "seed": ("random", "Same seed and request give the same answer on this server."),
    "n": ("1", "Independent answers to the same prompt."),
    "modalities": ('["text"]', 'With "image" the model may draw; ["image"] makes the answer start with a picture.'),
    "image_config": ("none", "Options of drawn pictures."),
    "image_config.aspect_ratio": ('"1:1"', "The picture's shape; this model draws squares."),
    "image_config.image_size": ('"1K"', "The picture's size; 1K is the model's native size."),
    "image_config.guidance_scale": ("{guidance_scale}", "Classifier-free guidance of the drawing (1 is none)."),
    "image_config.partial_images": ("0", "Streams only: previews of each picture while it is drawn, in "
                                    "delta.image_previews (the part not drawn yet is grey)."),
    "response_format": ("text", "json_object, or json_schema: the answer is decoded under the schema's grammar."),
    "structured_outputs": ("none", "Accepted for OpenRouter clients; response_format does the work."),
    "reasoning": ("none", "Think first, within a token budget, before answering."),
    "reasoning.effort": ("{default_effort}", "How long the model may think."),
    "reasoning.max_tokens": ("by effort", "The thought's token budget (instead of effort)."),
    "reasoning.exclude": ("false", "Think, but leave the thought out of the response."),
    "reasoning.enabled": ("on with reasoning", "Turn thinking on or off."),
    "reasoning_effort": ("none", "Shorthand of reasoning.effort."),
    "include_reasoning": ("none", "Legacy: true is reasoning {}, false is reasoning {exclude: true}."),
}


@dataclass(frozen=True)
class Row:
    name: str
    type: str
    range: str
    default: str
    effect: str


def parameter_rows(supported: list[str], live: dict[str, Any]) -> list[Row]:
    """Rows for the transport fields and the card's supported parameters, in the schema's order."""
    wanted = set(TRANSPORT) | set(supported)
    if "reasoning" in wanted:
        wanted.add("reasoning_effort")
    rows: list[Row] = []
    for name, field in ChatCompletionRequest.model_fields.items():
        if name in wanted:
            rows += _rows(name, field, live)
    return rows


def _rows(name: str, field: FieldInfo, live: dict[str, Any]) -> list[Row]:
    kind, bounds = describe(field.annotation, field.metadata)
    default, effect = EFFECTS.get(name, ("", MISSING_EFFECT))
    rows = [Row(name, kind, bounds, default.format(**live), effect)]
    nested = _model_of(field.annotation)
    if nested is not None:
        for child, child_field in nested.model_fields.items():
            rows += _rows(f"{name}.{child}", child_field, live)
    return rows


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The one pydantic model an optional field holds (image_config, reasoning), else None."""
    options = [a for a in _union_members(annotation) if a is not type(None)]
    if len(options) == 1 and isinstance(options[0], type) and issubclass(options[0], BaseModel):
        return options[0]
    return None


def _union_members(annotation: Any) -> tuple:
    return get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)


def describe(annotation: Any, metadata: list | tuple = ()) -> tuple[str, str]:
    """(type, range) of an annotation and its constraints, as a reader says them."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        kind, inner = describe(base)
        return kind, _join(inner, _bounds([*_constraints(extra), *metadata]))
    if origin in (Union, types.UnionType):
        parts = [describe(a) for a in get_args(annotation) if a is not type(None)]
        members = _members_of_annotated(annotation)
        if len(members) > 1 and all(isinstance(a, type) and issubclass(a, BaseModel) for a in members):
            return "object", "type " + " | ".join(_model_name(a) for a in members)
        kinds = " or ".join(dict.fromkeys(k for k, _ in parts))
        return kinds, _join("; ".join(r for _, r in parts if r), _bounds(metadata))
    if origin is Literal:
        return "string", "one of " + ", ".join(f'"{v}"' for v in get_args(annotation))
    if origin is list:
        kind, inner = describe(get_args(annotation)[0])
        return f"array of {kind}", _join(inner, _bounds(metadata))
    if origin is dict:
        kind, inner = describe(get_args(annotation)[1])
        return f"object of {kind}", inner
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object", ""
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    return names.get(annotation, "any"), _bounds(metadata)


def _members_of_annotated(annotation: Any) -> list:
    """The non-null members of a union, looking through Annotated[Union[...], ...]."""
    members = []
    for a in _union_members(annotation):
        if a is type(None):
            continue
        if get_origin(a) is Annotated:
            members += [m for m in _union_members(get_args(a)[0]) if m is not type(None)]
        else:
            members.append(a)
    return members


def _model_name(model: type[BaseModel]) -> str:
    kind = model.model_fields.get("type")
    return "|".join(get_args(kind.annotation)) if kind is not None else model.__name__


def _constraints(extra: list) -> list:
    out = []
    for item in extra:
        out += item.metadata if isinstance(item, FieldInfo) else [item]
    return out


def _bounds(metadata: list | tuple) -> str:
    low = high = None
    length = []
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            low = f"[{_number(m.ge)}"
        elif isinstance(m, annotated_types.Gt):
            low = f"({_number(m.gt)}"
        elif isinstance(m, annotated_types.Le):
            high = f"{_number(m.le)}]"
        elif isinstance(m, annotated_types.Lt):
            high = f"{_number(m.lt)})"
        elif isinstance(m, annotated_types.MinLen):
            length.append(f"≥ {m.min_length}")
        elif isinstance(m, annotated_types.MaxLen):
            length.append(f"≤ {m.max_length}")
    bounds = f"{low or '(−∞'}, {high or '∞)'}" if low or high else ""
    return _join(bounds, ("length " + ", ".join(length)) if length else "")


def _number(value: float) -> str:
    if abs(value) == 2**63:
        return ("−" if value < 0 else "") + "2^63"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
