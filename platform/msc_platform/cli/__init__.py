"""The `msc` command: `main` parses the line and imports only the chosen command's module."""
