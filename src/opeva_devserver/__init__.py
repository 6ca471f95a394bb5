"""opeva-devserver: a reference OPEVA backend for development, demos and integration tests."""
