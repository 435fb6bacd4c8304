"""Model registry and weight loading."""
