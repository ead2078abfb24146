"""environment.yml (conda, GPU clusters) and pyproject.toml (virtualenv) pin the same packages.

conda's name for torch is `pytorch`; torch and torchvision are conda packages (CUDA builds), the
rest is pip. Every pin must agree in both directions: a package pinned in one file and missing or
differently pinned in the other fails.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda package -> PyPI distribution
CONDA_ONLY = {"python", "pip"}  # the interpreter and the installer, not project dependencies
# system libraries conda provides and PyPI does not: FFmpeg for torchcodec and rsp.prepare
CONDA_SYSTEM = {"ffmpeg"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=;,<>!~]+)$")


def normalize(name: str) -> str:
    """PEP 503 name normalization: `PyYAML` and `pyyaml`, `hydra_core` and `hydra-core` agree."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(requirements: list[str], where: str) -> dict[str, str]:
    pins = {}
    for req in requirements:
        match = PIN.match(req.strip())
        if not match:
            pytest.fail(f"{where}: {req!r} is not an exact pin NAME==VERSION")
        pins[normalize(match.group(1))] = match.group(2)
    return pins


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


@pytest.fixture(scope="module")
def pyproject_pins(pyproject) -> dict[str, str]:
    project = pyproject["project"]
    requirements = list(project["dependencies"]) + list(project.get("optional-dependencies", {}).get("dev", []))
    return parse_pins(requirements, "pyproject.toml")


def split_environment(environment: dict) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """-> ({conda name: (version, build)}, pip requirement strings)."""
    conda, pip = {}, []
    for dep in environment["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"unexpected mapping in dependencies: {dep}"
            pip += dep["pip"]
            continue
        name, _, rest = dep.partition("=")
        version, _, build = rest.partition("=")
        conda[name.strip()] = (version.strip(), build.strip())
    return conda, pip


def test_environment_header(environment):
    assert environment["name"] == "rsp"
    assert environment["channels"][0] == "conda-forge"
    assert set(environment["channels"]) <= {"conda-forge", "nvidia"}


def test_conda_part_is_python_311_and_cuda_torch_pair(environment, pyproject, pyproject_pins):
    conda, _ = split_environment(environment)
    assert set(conda) == CONDA_ONLY | CONDA_SYSTEM | set(CONDA_NAMES) | {"torchvision"}, (
        f"conda installs only python, pip, FFmpeg and the torch pair; found {sorted(conda)}"
    )
    major = int(conda["ffmpeg"][0].split(".")[0])
    assert 4 <= major <= 9, f"torchcodec loads FFmpeg 4 to 9, environment.yml pins ffmpeg {conda['ffmpeg'][0]}"
    assert conda["ffmpeg"][1].startswith("gpl"), "rsp.prepare rescale needs libx264: a GPL build of ffmpeg"
    assert conda["python"][0] == "3.11"
    assert pyproject["project"]["requires-python"] == ">=3.11,<3.12"
    for conda_name in ("pytorch", "torchvision"):
        version, build = conda[conda_name]
        pypi_name = CONDA_NAMES.get(conda_name, conda_name)
        assert version == pyproject_pins[pypi_name], (
            f"{conda_name}={version} but pyproject pins {pypi_name}=={pyproject_pins[pypi_name]}"
        )
        assert build.startswith("cuda"), f"{conda_name} must be a CUDA build (build string cuda*), got {build!r}"


def test_every_pin_agrees_in_both_directions(environment, pyproject_pins):
    conda, pip_requirements = split_environment(environment)
    env_pins = parse_pins(pip_requirements, "environment.yml pip section")
    for conda_name, (version, _) in conda.items():
        if conda_name not in CONDA_ONLY | CONDA_SYSTEM:
            env_pins[normalize(CONDA_NAMES.get(conda_name, conda_name))] = version
    only_env = sorted(set(env_pins) - set(pyproject_pins))
    only_pyproject = sorted(set(pyproject_pins) - set(env_pins))
    differ = sorted(
        f"{n}: {env_pins[n]} vs {pyproject_pins[n]}"
        for n in set(env_pins) & set(pyproject_pins)
        if env_pins[n] != pyproject_pins[n]
    )
    assert not only_env, f"pinned in environment.yml but not in pyproject.toml: {only_env}"
    assert not only_pyproject, f"pinned in pyproject.toml but not in environment.yml: {only_pyproject}"
    assert not differ, f"pins differ (environment.yml vs pyproject.toml): {differ}"


def test_pip_section_does_not_reinstall_the_torch_pair(environment):
    _, pip_requirements = split_environment(environment)
    names = set(parse_pins(pip_requirements, "environment.yml pip section"))
    assert not names & {"torch", "torchvision"}, "pip must not replace conda's CUDA torch/torchvision"


def test_pin_parser_rejects_loose_requirements():
    with pytest.raises(pytest.fail.Exception, match="not an exact pin"):
        parse_pins(["timm>=1.0"], "example")
    assert parse_pins(["PyYAML==6.0.4", "hydra_core==1.3.8"], "example") == {"pyyaml": "6.0.4", "hydra-core": "1.3.8"}
