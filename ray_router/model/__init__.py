"""The router model: the ProbaRouter contract, layer probes and the layer scan, per-target preprocessing,
SharedTrunkNet and its ensemble training (Ray Train), the cost model, and the router bundle."""
