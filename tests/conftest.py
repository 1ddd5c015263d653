"""Shared test options: ``pytest --device cuda`` reruns the whole suite on a GPU."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device for the tests (cpu, cuda)")


def _device_problem(name: str) -> str | None:
    """Why ``--device name`` cannot run here, or None if it can."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device {name!r} is not a torch device; use --device cpu, cuda or cuda:N"
    if device.type == "cuda" and not torch.cuda.is_available():
        return (f"--device {name} but CUDA is not available here; run on a GPU machine "
                "or leave out --device to test on the CPU")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return (f"--device {name} but this machine has {torch.cuda.device_count()} CUDA "
                "device(s); use --device cuda or cuda:N with a smaller N")
    return None


def pytest_configure(config: pytest.Config) -> None:
    # Stop the session up front: skipping the device tests, or running them on the CPU,
    # would report a green GPU run that never touched a GPU.
    problem = _device_problem(config.getoption("--device"))
    if problem is not None:
        pytest.exit(problem, returncode=2)


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.config.getoption("--device"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
