"""The public Python API: `ray_router.__all__`, the README's example run for real, and what loading a router imports."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import ray_router

REPO = Path(__file__).resolve().parent.parent


def test_every_public_name_imports():
    assert 10 <= len(ray_router.__all__) <= 20
    for name in ray_router.__all__:
        assert getattr(ray_router, name).__name__ == name
    from ray_router import Router
    from ray_router.router import Router as BundleRouter

    assert Router is BundleRouter and callable(Router.load)  # the class that loads a bundle
    with pytest.raises(AttributeError):
        ray_router.no_such_name  # noqa: B018


def test_loading_a_router_imports_neither_ray_train_nor_the_public_api_eagerly():
    code = ("import sys; import ray_router; assert 'torch' not in sys.modules, 'eager'; "
            "import ray_router.router; assert not [m for m in sys.modules if m.startswith('ray.train')], 'ray.train'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]


def readme_example() -> str:
    """The fenced Python block of README.md's "Python" section."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("\n## Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.ray
def test_the_readme_example_routes_prompts(small_routerbench, small_features, tmp_path, monkeypatch, capsys):
    from ray_router.data.routing_dataset import RoutingDataset
    from ray_router.model.router_training import RouterTrainConfig, train_router

    example = readme_example()
    assert len(example.strip().splitlines()) <= 6
    targets = RoutingDataset.read(small_routerbench).target_names
    config = RouterTrainConfig.model_validate({"pca_k": 8, "trainer": {"n_seeds": 2, "keep_best": 1, "max_epochs": 10}})
    train_router(str(small_routerbench), str(small_features), str(tmp_path / "build" / "router"),
                 blocks=dict.fromkeys(targets, "smollm2-135m/L3_last"), config=config, use_ray=False)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert any(target in printed for target in targets), printed
