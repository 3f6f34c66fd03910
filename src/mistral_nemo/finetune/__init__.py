"""mistral-finetune-compatible LoRA / QLoRA fine-tuning: data, config, training loop, checkpoints."""
