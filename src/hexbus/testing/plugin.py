"""pytest plugin (entry point ``hexbus``): fixtures for testing code that uses hexbus."""
