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
    from shared.tenants.provisioning import left_in_org

    settings = Settings(
        entra_client_id=CLIENT,
        entra_home_tenant_id="aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        key_vault_url="https://kv.vault.azure.net",
        key_vault_certificate_name="c",
        security_role_name="Contoso Sync",
        webhook_subscriptions=(("account", ("Create", "Update")),),
    )
    text = left_in_org(settings, (ORG,))
    assert ORG in text and f"'S2S webhook {CLIENT}'" in text and "(Create of account, Update of account)" in text
    assert f"application ID {CLIENT}" in text and "'Contoso Sync'" in text
