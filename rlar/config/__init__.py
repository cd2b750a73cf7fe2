"""Configuration: the typed schemas, the config store and the checks run before any work."""
