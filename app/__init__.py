"""retr user surfaces: the CLI (and later the HTTP API and the Streamlit UI)."""
