"""The learner: model factory, training, checkpoints, image decoding, and streamed pool
scoring into ``PoolOutputs`` (``torch_learner.TorchLearner`` ties them together)."""
