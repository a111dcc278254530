"""Training: arguments of the published recipe, the Trainer, MMPro."""
