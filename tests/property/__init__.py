"""Property-based tests (hypothesis): the plugin's contract holds for any input."""
