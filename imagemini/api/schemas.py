"""The API contract as pydantic models: what a request may hold, what a response holds.

Requests are validated strictly (no "1" for 1, no 1.5 for an integer, no NaN); every
range is declared on its field. The rule for fields this module does not declare:

    UNKNOWN FIELDS ARE IGNORED, as OpenAI ignores them, at every level of the request
    (the ignored top-level names are echoed in the `X-Imagemini-Ignored-Fields` header).
    Fields this server RECOGNISES but cannot honour yet are declared below in the
    "recognised, not supported yet" group and refused with 400 `unsupported_parameter`
    when used (see `ChatCompletionRequest.unsupported_fields`), never silently ignored.

Responses follow OpenAI's `CreateChatCompletionResponse` / `...StreamResponse`, plus
OpenRouter's additive fields (`usage.cost`, `usage.completion_tokens_details.image_tokens`,
`message.images` / `delta.images` with generated pictures, `delta.image_previews` with pictures
being drawn, `message.reasoning` /
`message.reasoning_details` and their `delta` twins with the thought (api/reasoning.py);
those are left out of the JSON while they are None).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from imagemini.engine.params import MAX_PARTIAL_IMAGES

from .settings import MAX_CHOICES

INT64 = 2**63
MAX_STOPS = 4
OMIT_NONE = {"exclude_if": lambda v: v is None}  # response fields that are absent rather than null


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


# --- messages --------------------------------------------------------------------------------
class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImageUrl(_Request):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageUrlPart(_Request):
    type: Literal["image_url"]
    image_url: ImageUrl


class FileData(_Request):
    filename: str | None = None
    file_data: str | None = None
    file_id: str | None = None


class FilePart(_Request):
    type: Literal["file"]
    file: FileData


class InputAudioPart(_Request):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class RefusalPart(_Request):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[
    Union[TextPart, ImageUrlPart, FilePart, InputAudioPart, RefusalPart], Field(discriminator="type")
]


class ChatMessage(_Request):
    # tool/function are recognised so that they get a clear 400 (chat.py), not "invalid role".
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)] | None = None
    name: str | None = None  # accepted, not rendered: the chat template has no participant names
    tool_calls: list[dict[str, Any]] | None = None  # refused: no tools yet
    function_call: dict[str, Any] | None = None  # refused
    tool_call_id: str | None = None
    audio: dict[str, Any] | None = None  # refused
    # An earlier answer's pictures, as this server returned them (`message.images`): read as
    # that turn's pictures (assistant messages only; api/chat.py places them).
    images: list[ImageUrlPart] | None = None
    # An earlier answer's thought, as this server returned it: accepted, NOT rendered into the
    # prompt (earlier thoughts are dropped from the history, as DeepSeek-R1 does; api/reasoning.py).
    reasoning: str | None = None
    reasoning_details: list[dict[str, Any]] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_shape(cls, value: Any) -> Any:
        # One clear message instead of one error per member of the str | list union.
        if value is not None and not isinstance(value, (str, list)):
            raise ValueError("content must be a string or an array of content parts")
        return value


# --- request options -------------------------------------------------------------------------
class StreamOptions(_Request):
    include_usage: bool | None = None  # usage is always sent (OpenRouter): accepted, no effect
    include_obfuscation: bool | None = None  # no obfuscation field is ever sent


class JsonSchemaFormat(_Request):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormatText(_Request):
    type: Literal["text"]


class ResponseFormatJsonObject(_Request):
    type: Literal["json_object"]


class ResponseFormatJsonSchema(_Request):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    Union[ResponseFormatText, ResponseFormatJsonObject, ResponseFormatJsonSchema], Field(discriminator="type")
]

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class ReasoningConfig(_Request):
    effort: ReasoningEffort | None = None
    max_tokens: int | None = Field(None, ge=0)
    exclude: bool | None = None
    enabled: bool | None = None


class ImageConfig(_Request):
    """OpenRouter's image_config. Values are checked against the checkpoint (sampling.py): a
    model with one output size supports aspect_ratio "1:1" and image_size "1K" (its native size)."""

    aspect_ratio: str | None = None
    image_size: str | None = None
    guidance_scale: float | None = Field(None, ge=1, le=20)  # imagemini extension: classifier-free guidance
    # OpenAI's image API's partial_images: previews of each picture as it is drawn (streams only).
    partial_images: int | None = Field(None, ge=0, le=MAX_PARTIAL_IMAGES)


class ChatCompletionRequest(_Request):
    # --- honoured --------------------------------------------------------------------------------
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)  # deprecated alias of max_completion_tokens
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOPS)] | None = None
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    # --- accepted, no effect (documented) --------------------------------------------------------
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None  # there is no prefix cache
    metadata: dict[str, str] | None = None
    store: bool | None = None  # false/null only: nothing is stored (true is refused below)
    service_tier: Literal["auto", "default"] | None = None
    parallel_tool_calls: bool | None = None  # meaningless without tools
    # --- image output ---------------------------------------------------------------------------
    modalities: Annotated[list[Literal["text", "image"]], Field(min_length=1)] | None = None
    image_config: ImageConfig | None = None
    # --- structured output and reasoning (api/response_format.py, api/reasoning.py) ---------------
    response_format: ResponseFormat | None = None
    structured_outputs: bool | None = None  # OpenRouter's capability flag: accepted, no effect of its own
    reasoning: ReasoningConfig | None = None
    reasoning_effort: ReasoningEffort | None = None  # shorthand of reasoning.effort
    include_reasoning: bool | None = None  # legacy: true == reasoning {}, false == reasoning {exclude: true}
    # --- recognised, not supported yet: 400 when used ----------------------------------------------
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    plugins: list[Any] | None = None
    verbosity: str | None = None
    top_k: int | None = None  # OpenRouter sampling extensions: only their neutral values pass
    min_p: float | None = None
    top_a: float | None = None
    repetition_penalty: float | None = None

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return value

    @property
    def wants_image(self) -> bool:
        """Image output allowed: `modalities` includes "image"."""
        return "image" in (self.modalities or ())

    @property
    def image_only(self) -> bool:
        """`modalities: ["image"]`: the answer starts with an image (begin-of-image is appended)."""
        return bool(self.modalities) and set(self.modalities) == {"image"}

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def unsupported_fields(self) -> list[tuple[str, str]]:
        """(param, what) for each recognised-but-unsupported feature this request uses."""
        neutral = {"top_k": 0, "min_p": 0.0, "top_a": 0.0, "repetition_penalty": 1.0}
        checks = [
            ("tools", "tools", bool(self.tools)),
            ("tool_choice", "tool_choice", self.tool_choice not in (None, "none")),
            ("functions", "functions", bool(self.functions)),
            ("function_call", "function_call", self.function_call not in (None, "none")),
            ("audio", "audio output", self.audio is not None),
            ("prediction", "prediction", self.prediction is not None),
            ("web_search_options", "web search", self.web_search_options is not None),
            ("plugins", "plugins", bool(self.plugins)),
            ("verbosity", "verbosity", self.verbosity is not None),
            ("store", "store: true (stored completions)", bool(self.store)),
        ]
        checks += [(k, k, getattr(self, k) not in (None, v)) for k, v in neutral.items()]
        return [(param, what) for param, what, used in checks if used]


# --- responses -------------------------------------------------------------------------------------
class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ImageOutput(BaseModel):  # OpenRouter: {"type": "image_url", "image_url": {"url": "data:..."}}
    type: Literal["image_url"] = "image_url"
    image_url: dict[str, str]


class ImagePreviewOutput(ImageOutput):
    """A picture being drawn (`image_config.partial_images`): a stream's `delta.image_previews[]`."""

    index: int  # which picture of the choice's answer: 0 is the first one drawn
    preview_index: int  # which preview of that picture: 0, 1, ...


class ReasoningDetail(BaseModel):  # OpenRouter's reasoning_details[] item; null fields are sent as null
    type: Literal["reasoning.text"] = "reasoning.text"
    text: str
    signature: str | None = None
    id: str | None = None
    format: str = "unknown"
    index: int = 0


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    images: list[ImageOutput] | None = Field(None, **OMIT_NONE)
    reasoning: str | None = Field(None, **OMIT_NONE)
    reasoning_details: list[ReasoningDetail] | None = Field(None, **OMIT_NONE)


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Literal["stop", "length"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens read from the prefix cache (engine/prefix_cache.py)


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0
    image_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()
    completion_tokens_details: CompletionTokensDetails = CompletionTokensDetails()
    cost: float  # USD, from the model card's prices (OpenRouter)


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = Field(None, **OMIT_NONE)
    content: str | None = Field(None, **OMIT_NONE)
    images: list[ImageOutput] | None = Field(None, **OMIT_NONE)
    image_previews: list[ImagePreviewOutput] | None = Field(None, **OMIT_NONE)
    reasoning: str | None = Field(None, **OMIT_NONE)
    reasoning_details: list[ReasoningDetail] | None = Field(None, **OMIT_NONE)


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "error"] | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = Field(None, **OMIT_NONE)  # only in the last chunk, with choices == []
    error: ErrorDetail | None = Field(None, **OMIT_NONE)  # only in a mid-stream failure chunk


# --- model card (OpenRouter's model object, also a valid OpenAI `Model`) --------------------------
class Architecture(BaseModel):
    input_modalities: list[str]
    output_modalities: list[str]
    modality: str  # "text->text", "text+image->text+image"
    tokenizer: str
    instruct_type: str | None = None


class Pricing(BaseModel):  # USD per token (per image, per request), as decimal strings
    prompt: str
    completion: str
    image: str
    image_output: str
    request: str
    internal_reasoning: str
    web_search: str = "0"
    input_cache_read: str = "0"


class TopProvider(BaseModel):
    context_length: int
    max_completion_tokens: int
    is_moderated: bool = False


class ReasoningCapability(BaseModel):
    """What a checkpoint that can think accepts (api/reasoning.py): every effort maps to a budget."""

    supported_efforts: list[str]
    default_effort: str
    supports_max_tokens: bool = True


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    name: str
    description: str
    context_length: int
    architecture: Architecture
    pricing: Pricing
    supported_parameters: list[str]
    top_provider: TopProvider
    per_request_limits: dict[str, str] | None = None
    reasoning: ReasoningCapability | None = Field(None, **OMIT_NONE)  # absent: the checkpoint cannot think


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
