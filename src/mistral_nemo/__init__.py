"""mistral-nemo: a self-hosted runtime for the Mistral NeMo 12B model family."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from mistral_nemo.model.loading import LoadedModel

__version__ = "0.1.0"


def load(
    path: str | Path | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> LoadedModel:
    """Load a Mistral folder, an HF folder or a GGUF file (None: the embedded model).

    Imported lazily so that `import mistral_nemo.tokenizer` does not pull in torch.
    """
    from mistral_nemo.model.loading import load as load_model

    return load_model(path, dtype=dtype, device=device)
