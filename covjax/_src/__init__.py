"""covjax's implementation; the public API is re-exported by :mod:`covjax`."""
