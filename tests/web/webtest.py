"""What the browser tests share: the model card of their tiny checkpoint, unlike every default."""

CARD = {
    "id": "imagemini/tiny-web",
    "name": 'Tiny <b>web</b> & "test" model',
    "description": "A random checkpoint for the page's tests <script>alert(1)</script>.",
    "pricing_usd_per_million_tokens": {"prompt": 7.25, "completion": 3.5, "image_output": 11.0},
    "examples": [{"prompt": "Draw <something>.", "modalities": ["image", "text"], "note": "a note"}],
}
