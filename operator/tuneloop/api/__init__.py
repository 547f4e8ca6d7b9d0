"""Pydantic models of Tuneloop's custom resources and of the workloads they run."""
