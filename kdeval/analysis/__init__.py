"""A command's result over every model: pure functions of (ground truth, detections by model,
settings) that return tables and dataclasses. They run no model, know nothing of torchrun, mutate
none of their arguments and write no file (report/ writes what they return)."""
