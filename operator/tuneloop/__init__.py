"""Tuneloop: fine-tune and ship private LLMs on Kubernetes."""

__version__ = "0.1.0"
