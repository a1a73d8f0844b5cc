"""Where cascadekit's Hugging Face `evaluate` modules live, so that they load offline:
`evaluate.load(evaluate_module_path("macro_f1"))` (`evaluate.load("accuracy")` needs a hub)."""

from __future__ import annotations

from pathlib import Path

MODULES = ("accuracy", "macro_f1", "exact_match", "token_f1", "cascade_curve")


def evaluate_module_path(name: str) -> str:
    """The folder of the module `name` (one of MODULES)."""
    if name not in MODULES:
        raise ValueError(f"unknown metric {name!r}; cascadekit ships {', '.join(MODULES)}")
    return str(Path(__file__).parent / "evaluate_modules" / f"cascadekit_{name}")
