import pytest

from .harness import Service


@pytest.fixture
def service():
    """A running service with two simulated cameras, stopped afterwards."""
    with Service(simulate=2) as svc:
        yield svc
