"""NIJA: a copy-trading daemon for Kraken.

A master account runs the APEX v7.1 strategy; each of its fills is mirrored at once on every follower account,
sized to the follower's own equity.
"""

__version__ = "0.1.0"
