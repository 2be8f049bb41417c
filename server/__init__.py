"""FastAPI over the engine (arrives with the server issue)."""
