"""ray-router: route each query to the LLM most likely to answer it, from prefill activations."""

__version__ = "0.1.0"
