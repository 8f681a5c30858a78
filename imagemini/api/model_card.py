"""The model card of the loaded checkpoint (GET /v1/models) and the prices usage.cost comes from.

    card = load_card(model_dir, context_length=4096, max_sequence_tokens=4096)
    card.matches("tiny-janus")            # which request `model` values name this model
    card.cost(prompt_tokens=10, completion_tokens=5)

`model_card.json` beside the weights is optional; every key has a default:

    {
      "id": "imagemini/shapes-mini",            default "imagemini/<checkpoint dir name>"
      "name": "...", "description": "...",
      "owned_by": "imagemini",
      "created": 1764115200,                    default: mtime of the weight files
      "tokenizer": "Other",
      "input_modalities": ["text", "image"],    what the checkpoint can take / make; the server adds
      "output_modalities": ["text", "image"],   "file" (PDF/text files) to inputs that include text
      "pricing_usd_per_million_tokens": {"prompt": 2.5, "completion": 2.0,
                                         "internal_reasoning": <completion>, "image_output": <completion>,
                                         "input_cache_read": <prompt>},
      "pricing_usd_per_image": 0, "pricing_usd_per_request": 0,
      "examples": [{"prompt": "...", "modalities": [...], "note": "..."}]
    }

`examples` are prompts that work with this model: not part of the card's API shape, they are
shown on the model page (imagemini/web/page.py), which reads them from the file itself.

Prices, OpenRouter style: input image tokens are prompt tokens (BOI + N placeholders + EOI per
image) at the prompt price, plus `pricing_usd_per_image` per input image (card `pricing.image`);
generated image codes (completion_tokens_details.image_tokens) at the `image_output` price,
the other completion tokens at the completion price. Prompt tokens read from the prefix cache
(usage.prompt_tokens_details.cached_tokens) cost `input_cache_read`, the prompt price unless set.

What the card lists is what the server accepts: an image part needs "image" in the inputs, a
file part "file", `modalities: ["image"]` needs "image" in the outputs.

Model id rule: a request's `model` must be the card's `id` exactly, or its last path segment
(`tiny-janus` for `imagemini/tiny-janus`); responses always carry the full id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from imagemini.models.weights import weight_files

from .schemas import Architecture, ModelCard, Pricing, ReasoningCapability, TopProvider

# What the HTTP layer can carry: the card never claims more than this.
SERVED_INPUT_MODALITIES = ("text", "image", "file")
SERVED_OUTPUT_MODALITIES = ("text", "image")

# EXACTLY the sampling parameters this server honours now, in OpenRouter's vocabulary.
# Transport fields that every request may carry (model, messages, stream, stream_options,
# user) are not listed, as on OpenRouter.
SUPPORTED_PARAMETERS = [
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "modalities",
    "n",
    "presence_penalty",
    "response_format",
    "seed",
    "stop",
    "structured_outputs",
    "temperature",
    "top_logprobs",
    "top_p",
]

# Added when the checkpoint can think (api/reasoning.py: thinking_supported).
REASONING_PARAMETERS = ["include_reasoning", "reasoning"]
REASONING_EFFORTS = ["none", "minimal", "low", "medium", "high", "xhigh", "max"]

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Prices:
    """USD per token (Decimal, exact), per input image and per request."""

    prompt: Decimal
    completion: Decimal
    input_cache_read: Decimal
    internal_reasoning: Decimal
    image_output: Decimal
    image: Decimal
    request: Decimal

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> "Prices":
        per_million = card.get("pricing_usd_per_million_tokens", {})
        prompt = Decimal(str(per_million.get("prompt", 2.5))) / MILLION
        completion = Decimal(str(per_million.get("completion", 2.0))) / MILLION
        other = {
            k: Decimal(str(per_million[k])) / MILLION
            for k in ("internal_reasoning", "image_output", "input_cache_read") if k in per_million
        }
        return cls(
            prompt=prompt,
            completion=completion,
            input_cache_read=other.get("input_cache_read", prompt),
            internal_reasoning=other.get("internal_reasoning", completion),
            image_output=other.get("image_output", completion),
            image=Decimal(str(card.get("pricing_usd_per_image", 0))),
            request=Decimal(str(card.get("pricing_usd_per_request", 0))),
        )

    def pricing(self) -> Pricing:
        return Pricing(**{k: _usd(getattr(self, k)) for k in Pricing.model_fields if hasattr(self, k)})

    def cost(
        self, prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0, image_tokens: int = 0,
        input_images: int = 0, cached_tokens: int = 0,
    ) -> float:
        return float(self.exact_cost(prompt_tokens, completion_tokens, reasoning_tokens, image_tokens, input_images, cached_tokens))

    def exact_cost(
        self, prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0, image_tokens: int = 0,
        input_images: int = 0, cached_tokens: int = 0,
    ) -> Decimal:
        """USD, exact: usage.cost is its float, the ledger keeps it in nano-dollars. `cached_tokens`:
        the prompt tokens read from the prefix cache (part of `prompt_tokens`)."""
        text_tokens = completion_tokens - reasoning_tokens - image_tokens
        return (
            self.request
            + input_images * self.image
            + (prompt_tokens - cached_tokens) * self.prompt
            + cached_tokens * self.input_cache_read
            + text_tokens * self.completion
            + reasoning_tokens * self.internal_reasoning
            + image_tokens * self.image_output
        )

    def worst_case(self, prompt_tokens: int, max_completion_tokens: int, input_images: int = 0) -> Decimal:
        """The most a request can cost: every token at the dearest price it may be charged."""
        dearest = max(self.completion, self.internal_reasoning, self.image_output)
        prompt = max(self.prompt, self.input_cache_read)
        return self.request + input_images * self.image + prompt_tokens * prompt + max_completion_tokens * dearest


def _usd(value: Decimal) -> str:
    """OpenRouter writes prices as plain decimal strings: '0.0000025', never '2.5E-6'."""
    return format(value.normalize(), "f") if value else "0"


@dataclass(frozen=True)
class LoadedCard:
    card: ModelCard
    prices: Prices

    @property
    def id(self) -> str:
        return self.card.id

    def matches(self, model: str) -> bool:
        return model == self.card.id or model == self.card.id.rsplit("/", 1)[-1]

    def cost(
        self, prompt_tokens: int, completion_tokens: int, image_tokens: int = 0, input_images: int = 0, reasoning_tokens: int = 0,
        cached_tokens: int = 0,
    ) -> float:
        return self.prices.cost(
            prompt_tokens, completion_tokens, reasoning_tokens=reasoning_tokens, image_tokens=image_tokens,
            input_images=input_images, cached_tokens=cached_tokens,
        )

    @property
    def inputs(self) -> list[str]:
        return self.card.architecture.input_modalities

    @property
    def outputs(self) -> list[str]:
        return self.card.architecture.output_modalities


def load_card(model_dir: Path, context_length: int, max_sequence_tokens: int, reasoning: bool = False) -> LoadedCard:
    """`reasoning`: the checkpoint can think (the card then offers reasoning and says how)."""
    model_dir = Path(model_dir).resolve()
    path = model_dir / "model_card.json"
    raw: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    prices = Prices.from_card(raw)
    declared = list(raw.get("input_modalities", ["text", "image"]))
    if "text" in declared and "file" not in declared:
        declared.append("file")  # files are read into text (and page images) by the server
    inputs = [m for m in SERVED_INPUT_MODALITIES if m in declared]
    outputs = [m for m in SERVED_OUTPUT_MODALITIES if m in raw.get("output_modalities", ["text", "image"])]
    parameters = list(SUPPORTED_PARAMETERS)
    if "image" in outputs:
        parameters = sorted([*parameters, "image_config"])
    else:
        parameters.remove("modalities")
    if reasoning:
        parameters = sorted([*parameters, *REASONING_PARAMETERS])
    card = ModelCard(
        id=raw.get("id", f"imagemini/{model_dir.name}"),
        created=int(raw.get("created", max(f.stat().st_mtime for f in weight_files(model_dir)))),
        owned_by=raw.get("owned_by", "imagemini"),
        name=raw.get("name", f"imagemini: {model_dir.name}"),
        description=raw.get("description", f"Janus-format multimodal checkpoint '{model_dir.name}' served by imagemini."),
        context_length=context_length,
        architecture=Architecture(
            input_modalities=inputs,
            output_modalities=outputs,
            modality=f"{'+'.join(inputs)}->{'+'.join(outputs)}",
            tokenizer=raw.get("tokenizer", "Other"),
        ),
        pricing=prices.pricing(),
        supported_parameters=parameters,
        top_provider=TopProvider(context_length=max_sequence_tokens, max_completion_tokens=max_sequence_tokens - 1),
        reasoning=ReasoningCapability(supported_efforts=REASONING_EFFORTS, default_effort="medium") if reasoning else None,
    )
    return LoadedCard(card, prices)
