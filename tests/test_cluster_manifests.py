"""The cluster manifests parse, point only at files and job options that exist, and serve serve_configs/gpu.yaml."""

import re
import runpy
import shlex
from pathlib import Path

import pytest
import yaml

from ray_router.cli import main

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
MANIFESTS = sorted(CLUSTER.rglob("*.yaml"))
REPO_PATH = re.compile(r"(?<![\w.])(?:/app/|~/ray-router/)?((?:jobs|serve_configs|cluster|ray_router)/[\w./-]+\.(?:py|yaml))")


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kuberay(kind: str) -> list[dict]:
    return [d for p in MANIFESTS for d in documents(p) if d.get("kind") == kind]


def test_every_manifest_parses_and_names_existing_files():
    assert {p.name for p in MANIFESTS} >= {"ray-cluster-aws.yaml", "raycluster.yaml", "rayjob.yaml", "rayservice.yaml"}
    for path in [*MANIFESTS, CLUSTER / "Dockerfile", CLUSTER / "README.md"]:
        if path.suffix == ".yaml":
            assert documents(path), f"{path} is empty"
        for ref in REPO_PATH.findall(path.read_text()):
            assert (REPO / ref).exists(), f"{path.relative_to(REPO)} names {ref}, which is not in the repository"
    for source in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", (CLUSTER / "Dockerfile").read_text(), re.M):
        for name in source.split():
            assert (REPO / name).exists(), f"cluster/Dockerfile copies {name}, which is not in the repository"


def test_rayservice_serves_the_gpu_serve_config():
    render = runpy.run_path(str(CLUSTER / "render_rayservice.py"))["render"]
    path = CLUSTER / "kuberay" / "rayservice.yaml"
    assert path.read_text() == render(), "rayservice.yaml is out of date: run python cluster/render_rayservice.py"
    (service,) = kuberay("RayService")
    serve_config = (REPO / "serve_configs" / "gpu.yaml").read_text()
    assert service["spec"]["serveConfigV2"] == serve_config
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load(serve_config)
    (cluster,) = kuberay("RayCluster")
    assert service["spec"]["rayClusterConfig"] == cluster["spec"]


def test_serve_import_paths_exist():
    config = yaml.safe_load((REPO / "serve_configs" / "gpu.yaml").read_text())
    for app in config["applications"]:
        module = app["import_path"].split(":")[0]
        path = REPO / (module.replace(".", "/") + ".py")
        if module.startswith("ray_router.serving") and not (REPO / "ray_router" / "serving").exists():
            pytest.skip("ray_router/serving is not in this checkout yet")
        assert path.is_file(), f"serve_configs/gpu.yaml imports {module}, which has no {path.relative_to(REPO)}"


def job_command(entrypoint: str) -> tuple[str, list[str]]:
    """(ray-router command, its arguments) of `python /app/jobs/<job>.py ARGS`."""
    argv = shlex.split(entrypoint)
    assert argv[0] == "python", entrypoint
    job = REPO / REPO_PATH.fullmatch(argv[1]).group(1)
    command = re.search(r'main\(\["([\w-]+)"', job.read_text()).group(1)
    return command, argv[2:]


def test_rayjobs_run_job_entrypoints_with_valid_options():
    jobs = kuberay("RayJob")
    assert {job_command(j["spec"]["entrypoint"])[0] for j in jobs} == {"extract", "train"}
    (cluster,) = kuberay("RayCluster")
    for job in jobs:
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        yaml.safe_load(job["spec"]["runtimeEnvYAML"])
        command, args = job_command(job["spec"]["entrypoint"])
        main.commands[command].make_context(command, args)  # unknown or missing options raise here


def test_kuberay_cluster_has_gpu_workers_and_string_start_params():
    (cluster,) = kuberay("RayCluster")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
    worker = cluster["spec"]["workerGroupSpecs"][0]
    assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    bundle = yaml.safe_load((REPO / "serve_configs" / "gpu.yaml").read_text())["applications"][0]["args"]["bundle"]
    mounts = [m["mountPath"] for m in worker["template"]["spec"]["containers"][0]["volumeMounts"]]
    assert any(bundle.startswith(m + "/") for m in mounts), f"the serve config's bundle {bundle} is on no volume"


def test_cluster_launcher_installs_the_project_on_gpu_workers():
    config = yaml.safe_load((CLUSTER / "ray-cluster-aws.yaml").read_text())
    node_types = config["available_node_types"]
    assert config["head_node_type"] in node_types
    workers = [t for name, t in node_types.items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] <= t["max_workers"] <= config["max_workers"] for t in workers)
    assert config["file_mounts"] == {"~/ray-router": "."}
    assert any("pip install -e ~/ray-router" in c for c in config["setup_commands"])
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
