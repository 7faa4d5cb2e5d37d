"""The units of work of dbops: dump, compress, store, restore, prune, maintain."""

__version__ = "0.1.0"
