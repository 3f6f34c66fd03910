"""Speculative decoding: cheap drafts of the next tokens, verified in one forward pass, lossless."""
