"""API keys: who may call the API, and which project they may see."""
