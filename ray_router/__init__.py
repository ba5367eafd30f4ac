"""ray-router: route each query to the LLM most likely to answer it, from prefill activations.

    from ray_router import Router
    router = Router.load("build/router")
    decisions = router.route(["What is the capital of France?"])
    print(decisions.chosen())

The public names below are imported on first use, so `import ray_router` stays cheap (no torch, no Ray).
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    # a trained router and what it decides
    "Router": "ray_router.router",
    "Decisions": "ray_router.router",
    "PolicyConfig": "ray_router.policy.config",
    # the router contract and the routers that satisfy it
    "ProbaRouter": "ray_router.model.proba_router",
    "SharedTrunkRouter": "ray_router.model.trunk_router",
    "KnnRouter": "ray_router.model.knn_router",
    "TaskLabelRouter": "ray_router.evaluation.baselines",
    # the pipeline: data -> features -> router -> evaluation, and batch routing
    "RoutingDataset": "ray_router.data.routing_dataset",
    "EncoderConfig": "ray_router.features.schema",
    "FeatureStore": "ray_router.features.store",
    "WorkerResources": "ray_router.resources",
    "extract_features": "ray_router.features.extraction",
    "RouterTrainConfig": "ray_router.model.router_training",
    "train_router": "ray_router.model.router_training",
    "RouterInput": "ray_router.evaluation.evaluation",
    "SplitData": "ray_router.evaluation.evaluation",
    "evaluate": "ray_router.evaluation.evaluation",
    "run_evaluation": "ray_router.evaluation.job",
    "route_queries": "ray_router.batch.routing",
    "UserError": "ray_router.errors",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ray_router' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
