"""The depth experiment: monodepth (Godard et al., CVPR 2017) trained with many weighted losses.

``models`` holds the network (:class:`~experiments.depth.models.MonoDepth`),
``losses`` the 32 self-supervised losses and the static weights, ``metrics``
the KITTI evaluation (post-processing, depth errors, win rate).
"""
