"""environment.yml (conda users) and requirements.txt (pip) must name the same pinned set."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> set[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return {line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()}


def _conda_pip_section() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip section"
    return {spec.strip() for spec in pip_sections[0]}


def test_environment_yml_matches_requirements():
    conda = _conda_pip_section() - {"-e ."}
    pip = _requirements()
    assert conda == pip, f"only in environment.yml: {sorted(conda - pip)}; only in requirements.txt: {sorted(pip - conda)}"


def test_torch_is_pinned_to_the_cached_cpu_wheel():
    assert "torch==2.13.0" in _requirements()


def test_environment_installs_the_project():
    assert "-e ." in _conda_pip_section()
