"""The HTTP layer: OpenAI/OpenRouter-compatible chat completions (see server.py)."""
