"""Students: base models, LoRA, the training loop, saving/loading adapters, inference, scores."""
