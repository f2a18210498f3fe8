"""Datasets of the experiments, behind one shared data contract.

Every source yields a ``tf.data.Dataset`` of dict examples with (only those the
source has):

* ``"left"``: uint8 [H, W, 3], the RGB image (the only image of mono sources);
* ``"right"``: uint8 [H, W, 3], the right view of stereo sources;
* ``"depth"``: float32 [H, W], metres, 0 where unknown;
* ``"focal"``: float32, pixels at the example's resolution; ``"baseline"``: float32,
  metres; ``"doffs"`` (optional, 0 when absent): float32, the principal-point
  offset c_x(right) − c_x(left) of a rectified pair, pixels at the example's
  resolution; ``disparity_px = focal · baseline / depth − doffs``;
* ``"semantic"``: int32 [H, W], class ids, 255 = ignore;
* ``"normals"``: float32 [H, W, 3], unit normals in camera coordinates, 0 where invalid.

Targets of the right view, where a source has them, use the same names with a
``_right`` suffix (``depth_right``, ...).

Sources are looked up by name with :func:`get_dataset` (``"synthetic"``,
``"kitti"``, ``"cityscapes"``, ``"pascal_context"``, ``"nyuv2"``);
:mod:`experiments.data.input_pipeline` turns a dataset into batched numpy
iterators for training and evaluation.
"""

from experiments.data.registry import available_datasets, get_dataset, register_dataset

__all__ = ["available_datasets", "get_dataset", "register_dataset"]
