import pytest

from .fakes.mediamtx import FakeMediaMTX, Spec
from .harness import Service


@pytest.fixture
def service():
    """A running service with two simulated cameras, stopped afterwards."""
    with Service(simulate=2) as svc:
        yield svc


@pytest.fixture(scope="module")
def spec() -> Spec:
    """The MediaMTX v3 API spec (shared/mediamtx/openapi.yaml), parsed once per module."""
    return Spec()


@pytest.fixture
def fake(spec):
    """A spec-validating fake MediaMTX on a free port.

    Every test leaves a clean record: what the client sent matched the spec,
    and what the fake answered did too. Tests that send bad requests on
    purpose check and clear fake.violations themselves.
    """
    server = FakeMediaMTX(spec).start()
    yield server
    server.stop()
    assert server.violations == []
    assert server.response_errors == []
