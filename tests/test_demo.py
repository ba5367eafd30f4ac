"""`make demo` / `ray-router demo`: the user mistakes it must catch before any work starts."""

from click.testing import CliRunner

from ray_router.cli import main


def test_missing_data_is_one_line_saying_what_to_get_and_how_to_point_at_it(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--data", str(tmp_path / "nowhere"), "--build", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert result.output.startswith("error: no RouterBench data") and "make demo DATA=" in result.output
    assert "RouterDC" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()  # nothing was started
