"""The `kronypt` command line: one module per command group, all registered on `app`."""
