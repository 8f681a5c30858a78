"""The model page: server-rendered HTML from the live server's card, limits and request schema.

    html = render_page(PageFacts.of(state, base_url, examples, needs_key), playground_only=False)

Every value that comes from the card, the checkpoint or the request is escaped (html.escape);
the playground's settings travel to playground.js as JSON in a <script type="application/json">
with "<" escaped, so no value can end that element. Without JavaScript the card, the parameter
table and the code read as they are; the playground says it needs JavaScript.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from html import escape
from typing import Any

from imagemini.api.state import ServerState

from .parameters import parameter_rows
from .snippets import Snippet, snippets

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Example:
    """A prompt that works with this model (model_card.json `examples`)."""

    prompt: str
    modalities: tuple[str, ...] = ("text",)
    note: str = ""  # e.g. "attach a picture first"

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Example":
        return cls(str(raw["prompt"]), tuple(raw.get("modalities", ("text",))), str(raw.get("note", "")))


@dataclass(frozen=True)
class PageFacts:
    """What the page shows, read from the running server."""

    name: str
    model_id: str
    description: str
    context_length: int
    max_completion_tokens: int
    inputs: list[str]
    outputs: list[str]
    prices: list[tuple[str, str]]  # (what, price)
    efforts: list[str]  # reasoning efforts the card offers; empty: the model cannot think
    default_effort: str
    base_url: str  # "http://host:port/" of this server as the browser reached it
    needs_key: bool
    live: dict[str, Any]  # defaults the parameter table states
    supported: list[str]
    examples: list[Example] = field(default_factory=list)

    @classmethod
    def of(cls, state: ServerState, base_url: str, examples: list[Example], needs_key: bool) -> "PageFacts":
        card, prices, image = state.card.card, state.card.prices, state.limits.image
        reasoning = card.reasoning
        return cls(
            name=card.name,
            model_id=card.id,
            description=card.description,
            context_length=card.context_length,
            max_completion_tokens=card.top_provider.max_completion_tokens,
            inputs=list(card.architecture.input_modalities),
            outputs=list(card.architecture.output_modalities),
            prices=price_rows(prices, "image" in card.architecture.output_modalities, reasoning is not None),
            efforts=list(reasoning.supported_efforts) if reasoning else [],
            default_effort=reasoning.default_effort if reasoning else "",
            base_url=base_url if base_url.endswith("/") else base_url + "/",
            needs_key=needs_key,
            live={
                "default_max_tokens": state.settings.default_max_tokens,
                "image_temperature": _default(image.temperature, 1),
                "image_top_p": _default(image.top_p, 1),
                "guidance_scale": _default(image.guidance_scale, 1),
                "default_effort": reasoning.default_effort if reasoning else "",
            },
            supported=list(card.supported_parameters),
            examples=examples,
        )


def _default(value: float | None, fallback: float) -> str:
    return f"{value if value is not None else fallback:g}"


def price_rows(prices, image_output: bool, reasoning: bool) -> list[tuple[str, str]]:
    rows = [("Input", per_million(prices.prompt)), ("Output", per_million(prices.completion))]
    if image_output:
        rows.append(("Image output", per_million(prices.image_output)))
    if reasoning:
        rows.append(("Reasoning", per_million(prices.internal_reasoning)))
    if prices.image:
        rows.append(("Input image", f"{usd(prices.image)} per image"))
    if prices.request:
        rows.append(("Request", f"{usd(prices.request)} per request"))
    return rows


def per_million(per_token: Decimal) -> str:
    return f"{usd(per_token * MILLION)} per million tokens"


def usd(value: Decimal) -> str:
    """$2.50, $0.125, $0: cents always shown, more digits only where the price has them."""
    if value == 0:
        return "$0"
    exponent = value.normalize().as_tuple().exponent
    return f"${value:.2f}" if exponent >= -2 else f"${value.normalize():f}"


# --- HTML --------------------------------------------------------------------------------------------
def render_page(facts: PageFacts, playground_only: bool = False) -> str:
    title = f"{facts.name} playground" if playground_only else facts.name
    sections = [_playground(facts)] if playground_only else [
        _card(facts), _examples(facts), _playground(facts), _parameters(facts), _code(facts)
    ]
    nav = ('<a href="/">Model page</a>' if playground_only else
           '<a href="#model">Model</a> <a href="#playground">Playground</a> '
           '<a href="#parameters">Parameters</a> <a href="#code">Code</a>')
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/style.css">
</head>
<body>
<header>
<h1>{escape(facts.name)}</h1>
<p class="model-id"><code>{escape(facts.model_id)}</code></p>
<nav aria-label="Sections">{nav}</nav>
</header>
<main>
{"".join(sections)}
</main>
<script type="application/json" id="playground-config">{_config_json(facts)}</script>
<script src="/static/playground.js" defer></script>
</body>
</html>
"""


def _config_json(facts: PageFacts) -> str:
    config = {
        "model": facts.model_id,
        "api": "/v1",
        "inputs": facts.inputs,
        "outputs": facts.outputs,
        "efforts": facts.efforts,
    }
    return json.dumps(config).replace("<", "\\u003c")


def _card(facts: PageFacts) -> str:
    prices = "".join(f"<tr><th scope=\"row\">{escape(what)}</th><td>{escape(price)}</td></tr>" for what, price in facts.prices)
    facts_list = [
        ("Model id", f"<code>{escape(facts.model_id)}</code>"),
        ("Context length", f"{facts.context_length:,} tokens"),
        ("Longest answer", f"{facts.max_completion_tokens:,} tokens"),
        ("Input", escape(", ".join(facts.inputs))),
        ("Output", escape(", ".join(facts.outputs))),
        ("Reasoning", escape(f"yes: efforts {', '.join(facts.efforts)} (default {facts.default_effort})") if facts.efforts else "no"),
        ("API", f"<code>{escape(facts.base_url)}v1</code> (OpenAI Chat Completions; also under /api/v1)"),
    ]
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts_list)
    return f"""<section id="model" aria-labelledby="model-title">
<h2 id="model-title">Model</h2>
<p class="description">{escape(facts.description)}</p>
<dl class="facts">{items}</dl>
<table class="prices"><caption>Prices (USD)</caption><tbody>{prices}</tbody></table>
</section>
"""


def _examples(facts: PageFacts) -> str:
    if not facts.examples:
        return ""
    items = "".join(
        f'<li><button type="button" class="example" data-prompt="{escape(e.prompt)}" '
        f'data-modalities="{escape(",".join(e.modalities))}">{escape(e.prompt)}</button>'
        + (f' <span class="note">{escape(e.note)}</span>' if e.note else "") + "</li>"
        for e in facts.examples
    )
    return f"""<section id="examples" aria-labelledby="examples-title">
<h2 id="examples-title">Prompts that work</h2>
<ul class="examples">{items}</ul>
</section>
"""


def _playground(facts: PageFacts) -> str:
    options = [
        _number("temperature", "Temperature", 'min="0" max="2" step="0.1"'),
        _number("top_p", "top_p", 'min="0.01" max="1" step="0.05"'),
        _number("seed", "Seed", 'step="1"'),
        _number("max_tokens", "Max tokens", 'min="1" step="1"'),
    ]
    if "image" in facts.outputs:
        options.append(_select("modalities", "Modalities", [("text", "text"), ("image,text", "image and text"),
                                                           ("image", "image first")]))
    if facts.efforts:
        options.append(_select("effort", "Reasoning effort", [("", "off"), *((e, e) for e in facts.efforts)]))
    accept = ",".join((["image/png", "image/jpeg", "image/webp", "image/gif"] if "image" in facts.inputs else [])
                      + (["application/pdf", ".pdf"] if "file" in facts.inputs else []))
    key_note = "This server requires an API key." if facts.needs_key else "Only for servers that require one."
    return f"""<section id="playground" aria-labelledby="playground-title">
<h2 id="playground-title">Playground</h2>
<noscript><p class="note">The playground needs JavaScript; the rest of this page does not.</p></noscript>
<div id="chat" class="chat" aria-live="polite"></div>
<form id="composer" class="composer">
<div id="attachments" class="attachments"></div>
<label for="prompt">Message</label>
<textarea id="prompt" rows="3" placeholder="Type a message; drop images or PDFs here"></textarea>
<div class="actions">
<input id="attach" type="file" class="visually-hidden" accept="{escape(accept)}" multiple aria-label="Attach images or PDFs">
<button type="button" id="attach-button"{"" if accept else " disabled"}>Attach…</button>
<button type="submit" id="send">Send</button>
<button type="button" id="stop" disabled>Stop</button>
<button type="button" id="clear">New chat</button>
</div>
<details class="options"><summary>Options</summary>
<div class="option-grid">
{"".join(options)}
<label for="schema">JSON schema <span class="note">(response_format json_schema)</span></label>
<textarea id="schema" rows="3" spellcheck="false" placeholder='{{"type": "object", ...}}'></textarea>
<label for="api-key">API key <span class="note">{escape(key_note)} Kept in this browser (localStorage).</span></label>
<input id="api-key" type="password" autocomplete="off" spellcheck="false">
</div>
</details>
<p id="composer-note" class="note" role="status"></p>
</form>
<dialog id="viewer" aria-label="Picture"><img id="viewer-image" alt="Drawn picture, enlarged">
<form method="dialog"><button>Close</button></form></dialog>
</section>
"""


def _number(name: str, label: str, attributes: str) -> str:
    return f'<label for="{name}">{label}</label><input id="{name}" type="number" {attributes} placeholder="default">'


def _select(name: str, label: str, choices: list[tuple[str, str]]) -> str:
    options = "".join(f'<option value="{escape(value)}">{escape(text)}</option>' for value, text in choices)
    return f'<label for="{name}">{label}</label><select id="{name}">{options}</select>'


def _parameters(facts: PageFacts) -> str:
    rows = "".join(
        f"<tr><td><code>{escape(r.name)}</code></td><td>{escape(r.type)}</td><td>{escape(r.range)}</td>"
        f"<td>{escape(r.default)}</td><td>{escape(r.effect)}</td></tr>"
        for r in parameter_rows(facts.supported, facts.live)
    )
    return f"""<section id="parameters" aria-labelledby="parameters-title">
<h2 id="parameters-title">Parameters</h2>
<p>What <code>POST /v1/chat/completions</code> takes for this model, from the schema that validates requests.
Unknown fields are ignored; fields this server cannot honour are refused with a 400.</p>
<div class="scroll"><table class="parameters">
<thead><tr><th scope="col">Name</th><th scope="col">Type</th><th scope="col">Range</th><th scope="col">Default</th><th scope="col">What it does</th></tr></thead>
<tbody>{rows}</tbody>
</table></div>
</section>
"""


def _code(facts: PageFacts) -> str:
    blocks = "".join(_snippet(s) for s in snippets(facts))
    return f"""<section id="code" aria-labelledby="code-title">
<h2 id="code-title">Code</h2>
{blocks}
</section>
"""


def _snippet(snippet: Snippet) -> str:
    return (f'<h3>{escape(snippet.title)}</h3><div class="snippet"><pre data-lang="{snippet.language}"><code>'
            f"{escape(snippet.code)}</code></pre>"
            f'<button type="button" class="copy" aria-label="Copy: {escape(snippet.title)}">Copy</button></div>')
