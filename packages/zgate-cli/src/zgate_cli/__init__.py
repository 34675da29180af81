"""zgate."""
