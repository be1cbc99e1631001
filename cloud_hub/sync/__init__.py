"""The hub's end of the sync link."""
