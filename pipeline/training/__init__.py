"""Fine-tuning a checkpoint on reviewed labels."""
