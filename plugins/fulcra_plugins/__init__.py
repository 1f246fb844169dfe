"""Bundled fulcra plugins, registered through entry points exactly like a third party's."""
