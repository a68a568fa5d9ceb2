"""Models: the vision backbones and the classic named models, and the round-0 model."""
