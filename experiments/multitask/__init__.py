"""Multi-task pixelwise experiment: segmentation, depth and surface normals on one network.

The LSB setting (Lee, Lee, Kim, ICCV 2021; MTAN/LibMTL's NYUv2 benchmark):
one shared encoder–decoder (:mod:`.models`), three losses named
``"segmentation"``, ``"depth"`` and ``"normals"`` (:mod:`.losses`), the
standard metrics and Δm% (:mod:`.metrics`), training under any covjax scheme
(:mod:`.train`), evaluation (:mod:`.evaluate`) and a comparison of schemes
(:mod:`.compare`).
"""
