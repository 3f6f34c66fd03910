"""Training data as mistral-finetune reads it: JSONL sources, token masks, packing into windows."""
