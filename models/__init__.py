"""Records on topics and validated input models."""
