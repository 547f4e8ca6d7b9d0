"""Talk to a local run's model: base and tuned (base + the run's adapter) side by side.

run_model.py finds what a run folder trained (base model, adapter, system prompt); chat_models.py
loads them once and answers exactly as the evaluator does; app.py serves them as an
OpenAI-compatible HTTP endpoint (`tuneloop serve --local`); `tuneloop chat` uses chat_models.py
in-process.
"""
