"""What the administrator reads about onboarding's own provisioning (shared.tenants.provisioning): the summary of a
finished run, of a run stopped by a missing privilege (named) and the awaiting page that then offers the manual
steps with it."""

from __future__ import annotations

from functions import onboarding_pages as pages
from shared.tenants.provisioning import ProvisioningReport, ProvisioningStep, StepOutcome

ORG = "https://fab.crm4.dynamics.com"
CLIENT = "11111111-2222-3333-4444-555555555555"


def test_a_finished_run_lists_every_step() -> None:
    report = ProvisioningReport(
        ORG,
        (
            ProvisioningStep("role", StepOutcome.CREATED),
            ProvisioningStep("privileges", StepOutcome.UPDATED),
            ProvisioningStep("application_user", StepOutcome.UNCHANGED),
            ProvisioningStep("role_assignment", StepOutcome.CREATED),
        ),
    )
    assert report.complete and report.stopped_at is None
    assert report.summary() == (
        f"Provisioned in {ORG}: role created, privileges updated, application_user unchanged, role_assignment created."
    )


def test_a_refused_step_is_named_with_its_privilege_and_the_manual_steps_follow() -> None:
    refused = ProvisioningStep(
        "application_user", StepOutcome.REFUSED, "you are missing the prvCreateUser privilege.", "prvCreateUser"
    )
    report = ProvisioningReport(ORG, (ProvisioningStep("role", StepOutcome.CREATED), refused))
    assert not report.complete and report.stopped_at is refused
    summary = report.summary()
    assert "stopped at application_user (refused)" in summary and "prvCreateUser" in summary
    assert "Done before that: role created." in summary

    page = pages.awaiting_page("Contoso Sync", CLIENT, "t", ORG, detail="no user", ticket=None, provisioned=summary)
    text = page.get_body().decode()
    assert "could not finish" in text and "prvCreateUser" in text
    assert "Create the application user" in text and CLIENT in text
    plain = pages.awaiting_page("Contoso Sync", CLIENT, "t", ORG, detail="no user", ticket=None).get_body().decode()
    assert "could not finish" not in plain


def test_offboarding_names_what_is_left_in_each_environment() -> None:
    from shared.settings import Settings
    from shared.tenants.webhook_upkeep import EndpointRemoval, UpkeepOutcome, WebhookUpkeep

    settings = Settings(
        entra_client_id=CLIENT,
        entra_home_tenant_id="aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        key_vault_url="https://kv.vault.azure.net",
        key_vault_certificate_name="c",
        security_role_name="Contoso Sync",
        webhook_subscriptions=(("account", ("Create", "Update")),),
    )
    other = "https://fabrikam.crm.dynamics.com"
    removals = (
        EndpointRemoval(ORG, UpkeepOutcome.DONE, 2),
        EndpointRemoval(other, UpkeepOutcome.REFUSED, 1, "missing prvDeleteServiceEndpoint"),
    )
    removed, refused = WebhookUpkeep(settings, None, None).left_in_orgs(removals)  # type: ignore[arg-type]
    assert (removed["org_url"], removed["webhook"], removed["steps_removed"]) == (ORG, "done", 2)
    assert (refused["org_url"], refused["webhook"], refused["detail"]) == (
        other,
        "refused",
        "missing prvDeleteServiceEndpoint",
    )
    # The application user and the role always stay (the app must not change its own access), named for both.
    for report in (removed, refused):
        assert any(f"application ID {CLIENT}" in item for item in report["left"])
        assert any("'Contoso Sync'" in item for item in report["left"])
    # The endpoint is named as left only where it could not be removed, with its steps.
    assert not any("service endpoint" in item for item in removed["left"])
    (endpoint,) = [item for item in refused["left"] if "service endpoint" in item]
    assert f"'S2S webhook {CLIENT}'" in endpoint and "(Create of account, Update of account)" in endpoint
