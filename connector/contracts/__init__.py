"""The ports the round logic depends on (labeling backend, object store), the learner
protocol, and the errors a user can hit. No I/O, no third-party services."""
