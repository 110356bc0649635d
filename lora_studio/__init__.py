"""LoRA Studio: fine-tune language models with LoRA and QLoRA on your own machine."""

__version__ = "0.1.0"
