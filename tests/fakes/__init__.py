"""In-memory stand-ins for fast unit tests of logic (the real things run in integration tests)."""
