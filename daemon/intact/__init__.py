"""intact: a sidecar daemon that keeps streaming LLM responses intact."""

__version__ = "0.1.0"
