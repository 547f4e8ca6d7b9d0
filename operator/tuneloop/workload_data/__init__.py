"""What the trainer and the evaluator both read: dataset rows (`rows`) and the base model's tokenizer with
its chat template (`chat`). Both images install it with the operator's package; nothing here imports
torch or transformers before a tokenizer is loaded."""
