"""Models, normalisation, augmentation, training, evaluation and checkpoints."""
