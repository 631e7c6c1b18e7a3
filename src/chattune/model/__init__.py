"""Model: load tokenizer and base model, attach LoRA adapters."""
