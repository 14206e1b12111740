"""The caching gateway: many workers read chunks through it, the store serves each once."""
