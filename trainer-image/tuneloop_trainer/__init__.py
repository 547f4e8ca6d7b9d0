"""Tuneloop's trainer: one spec file in, a LoRA/QLoRA/full fine-tune and one result file out."""
