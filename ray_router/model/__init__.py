"""The router model: the ProbaRouter contract and its heads (SharedTrunkNet, logistic, kNN, stack), layer
probes and the layer scan, preprocessing blocks, ensemble training (Ray Train), calibration, the cost model,
and the router bundle with `train_router`, which writes it."""
