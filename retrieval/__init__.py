"""retr retrieval side: encoders (dual-encoder towers) and search over built indexes."""
