"""Training machinery shared by the depth, segmentation and multi-task experiments.

* :mod:`.task`: the ``Task`` protocol an experiment implements;
* :mod:`.schemes`: weighting schemes by name (the configs' ``scheme`` field);
* :mod:`.train`: the jitted train step and the loop (logging, checkpoints,
  data parallelism);
* :mod:`.sharding`, :mod:`.checkpoints`, :mod:`.logging_utils`: their parts;
* :mod:`.report`: Markdown tables and weight plots;
* :mod:`.conv`: the models' convolution, kept off XLA:CPU's naive loop when a
  feature map is smaller than its kernel, and a detector for that loop;
* :mod:`.toy_task`: a tiny multi-loss task for tests and examples.
"""
