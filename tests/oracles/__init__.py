"""Independent NumPy (float64) re-implementations of every scheme, written from SPEC.md.

They never call covjax; tests compare covjax against them. Import as
``from oracles import cov`` (pytest puts tests/ on sys.path).
"""
