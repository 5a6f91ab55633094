"""Contract suites: one behaviour, every implementation of a public interface."""
