"""Ray actor classes, one file per model family; resolved by name from config (raypref.registry)."""
