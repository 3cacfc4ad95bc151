"""LSP feature handlers, one module per feature; each exposes `register(server)`."""
