"""Prefill features: encoder sources, the feature schema, the prefill encoder (one class for extraction,
batch routing and serving), the extraction job and the feature folder it writes."""
