"""Personal data and secrets: masking, redaction, erasure and retention."""
