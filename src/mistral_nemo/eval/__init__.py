"""`mistral-nemo eval`: lm-eval (EleutherAI's harness) on this project's engine, on local data."""
