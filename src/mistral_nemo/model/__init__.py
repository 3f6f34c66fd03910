"""Weights in, logits out: model args, the transformer, quantized layers and weight loaders."""
