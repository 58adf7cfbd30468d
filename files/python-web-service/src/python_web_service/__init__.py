"""A tornado web service whose greeting comes from a JSON config file."""
