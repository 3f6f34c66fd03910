"""File formats read by more than one part (the lowest layer: it imports nothing of this project).

`gguf`: llama.cpp's GGUF, header and block layouts, for the tokenizer, the loaders and the compact layers.
"""
