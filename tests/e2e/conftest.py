"""End-to-end tests reuse the integration world: the sandbox session and the onboarding flow fixture."""

from tests.integration.conftest import sandbox, sandbox_env  # noqa: F401 - re-exported fixtures
from tests.integration.test_onboarding_flow import flow  # noqa: F401 - re-exported fixture
