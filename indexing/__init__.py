"""retr indexing side: ingest → decode → embed → shard → FAISS index build."""
