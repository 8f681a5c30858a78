"""The model page's code to copy, written for this server's base URL and model id.

Each Python snippet runs as it is against the server that rendered it (tests/web/test_page.py
runs them on the bundled model): plain text streamed, a picture drawn and saved, then edited.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .page import PageFacts

DRAW_PROMPT = "Draw a large red circle at the top left on a white background."
EDIT_PROMPT = "Change the circle to blue."


@dataclass(frozen=True)
class Snippet:
    title: str
    language: str  # "bash" | "python"
    code: str


def snippets(facts: "PageFacts") -> list[Snippet]:
    base = f"{facts.base_url}v1"
    client = f'client = OpenAI(base_url={json.dumps(base)}, api_key=os.environ.get("IMAGEMINI_API_KEY", "unused"))'
    out = [_curl(facts, base), Snippet("Python (openai), streamed", "python", _streamed(client, facts.model_id))]
    if "image" in facts.outputs:
        out.append(Snippet("Draw a picture and save it as PNG", "python", _drawn(client, facts.model_id)))
    if "image" in facts.outputs and "image" in facts.inputs:
        out.append(Snippet("Edit a picture", "python", _edited(client, facts.model_id)))
    return out


def _curl(facts: "PageFacts", base: str) -> Snippet:
    body = json.dumps({"model": facts.model_id, "messages": [{"role": "user", "content": "Hello!"}]})
    quoted = "'" + body.replace("'", "'\\''") + "'"  # one shell word, whatever the model id holds
    auth = '  -H "Authorization: Bearer $IMAGEMINI_API_KEY" \\\n' if facts.needs_key else ""
    return Snippet("curl", "bash", f'curl {base}/chat/completions \\\n  -H "Content-Type: application/json" \\\n{auth}  -d {quoted}')


def _streamed(client: str, model_id: str) -> str:
    return f'''import os

from openai import OpenAI

{client}
stream = client.chat.completions.create(
    model={json.dumps(model_id)},
    messages=[{{"role": "user", "content": "What can you do?"}}],
    stream=True,
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
'''


def _drawn(client: str, model_id: str) -> str:
    return f'''import base64
import os

from openai import OpenAI

{client}
reply = client.chat.completions.create(
    model={json.dumps(model_id)},
    messages=[{{"role": "user", "content": "{DRAW_PROMPT}"}}],
    extra_body={{"modalities": ["image", "text"]}},
    seed=1,
)
url = reply.choices[0].message.images[0]["image_url"]["url"]  # "data:image/png;base64,..."
with open("picture.png", "wb") as f:
    f.write(base64.b64decode(url.split(",", 1)[1]))
print("saved picture.png")
'''


def _edited(client: str, model_id: str) -> str:
    return f'''import base64
import os

from openai import OpenAI

{client}
with open("picture.png", "rb") as f:
    picture = "data:image/png;base64," + base64.b64encode(f.read()).decode()
reply = client.chat.completions.create(
    model={json.dumps(model_id)},
    messages=[{{"role": "user", "content": [
        {{"type": "image_url", "image_url": {{"url": picture}}}},
        {{"type": "text", "text": "{EDIT_PROMPT}"}},
    ]}}],
    extra_body={{"modalities": ["image", "text"]}},
    seed=1,
)
url = reply.choices[0].message.images[0]["image_url"]["url"]
with open("edited.png", "wb") as f:
    f.write(base64.b64decode(url.split(",", 1)[1]))
print("saved edited.png")
'''
