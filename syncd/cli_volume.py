"""Volume commands (placeholder)."""
