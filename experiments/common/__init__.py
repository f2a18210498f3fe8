"""Training machinery shared by the depth, segmentation and multi-task experiments.

* :mod:`.task`: the ``Task`` protocol an experiment implements (and
  ``EvaluatedTask``, which also scores its network);
* :mod:`.schemes`: weighting schemes by name (the configs' ``scheme`` field);
* :mod:`.train`: the jitted train step and the loop (logging, checkpoints,
  data parallelism);
* :mod:`.evaluate`: the evaluation loop (each task supplies its prediction and metric);
* :mod:`.compare`: train and evaluate a list of runs at several seeds, write the
  report (each task supplies its table layout);
* :mod:`.backbones`: the dilated ResNet of the dense tasks and its ImageNet weights;
* :mod:`.metrics`: the confusion-matrix scores (pixel accuracy, mean IoU);
* :mod:`.cli`: what every command line shares (``--config``, ``--show_config`` …);
* :mod:`.config`, :mod:`.data`: the shared config fields and data plumbing;
* :mod:`.sharding`, :mod:`.checkpoints`, :mod:`.logging_utils`: the loop's parts;
* :mod:`.report`: Markdown tables and weight plots;
* :mod:`.conv`: the models' convolution, kept off XLA:CPU's naive loop when a
  feature map is smaller than its kernel, and a detector for that loop.
"""
