"""chattune: fine-tune chat LLMs with LoRA, then chat with, evaluate, export and serve them."""

__version__ = "0.1.0"
