"""Placeholder while the uvloop_loop extra is being built."""
