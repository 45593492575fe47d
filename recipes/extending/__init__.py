"""Tools for plugin authors: a new plugin package scaffolded from a template."""
