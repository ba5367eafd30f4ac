"""Online routing on Ray Serve: encoder -> router head -> target backends, behind an OpenAI-compatible ingress."""
