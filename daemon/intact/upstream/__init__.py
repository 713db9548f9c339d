"""The upstream side: HTTP clients for OpenAI-compatible providers."""
