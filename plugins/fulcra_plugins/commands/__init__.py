"""Bundled ``fulcra`` sub-commands (kind ``commands``)."""
