"""Microsoft's own Dataverse SDK (PowerPlatform-Dataverse-Client 1.1.0) with an azure-identity
CertificateCredential, unchanged, against the sandbox: the org URL is a real-looking
https://<org>.crm.dynamics.com and only the environment (REQUESTS_CA_BUNDLE, HTTPS_PROXY) differs. Covers CRUD,
$batch, choice labels, formatted values, $expand, and paging past 5,000 rows by nextLink and by FetchXML cookie.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from azure.identity import CertificateCredential

from sandbox import Sandbox

from .conftest import DataverseOrg

pytestmark = pytest.mark.integration

# The SDK pulls in pandas/numpy (about a second); import it once, here.
client_module = pytest.importorskip("PowerPlatform.Dataverse.client")
models_module = pytest.importorskip("PowerPlatform.Dataverse.models")


@pytest.fixture
def sdk(new_org: Callable[..., DataverseOrg], sandbox_env: Sandbox) -> Iterator[tuple[Any, DataverseOrg]]:
    org = new_org(suffix="crm.dynamics.com")
    credential = CertificateCredential(
        org.app.tenant_id,
        org.app.client_id,
        certificate_data=org.app.certificate.combined_pem.encode("ascii"),
        # azure-identity takes the authority as a host name without scheme.
        authority=sandbox_env.authority_host.removeprefix("https://"),
        disable_instance_discovery=True,
    )
    with client_module.DataverseClient(org.url, credential) as client:
        yield client, org


def test_sdk_creates_reads_queries_and_deletes(sdk: tuple[Any, DataverseOrg], sandbox_env: Sandbox) -> None:
    client, org = sdk
    records = client.records
    state = sandbox_env.state
    state.seed_rows(org.url, "accounts", 23, prefix="Seeded")

    created = records.create("account", {"name": "Contoso", "revenue": 1500})
    fetched = records.retrieve("account", created, select=["name", "revenue"])
    many = records.create("contact", [{"firstname": "Ada", "lastname": str(n)} for n in range(3)])
    pages = list(records.list_pages("account", select=["name"], filter="statecode eq 0", page_size=10))
    records.update("account", created, {"telephone1": "555-0100"})
    records.delete("account", created)
    gone = records.retrieve("account", created)

    assert fetched is not None
    assert fetched["name"] == "Contoso"
    assert fetched["revenue"] == 1500
    assert len(many) == 3
    assert [len(page) for page in pages] == [10, 10, 4]
    assert gone is None
    assert len(state.rows(org.url, "accounts")) == 23
    assert sorted(row["lastname"] for row in state.rows(org.url, "contacts")) == ["0", "1", "2"]
    assert state.count("proxy_connect", host=org.org.host, status=200) >= 1
    assert state.count("dataverse_request", org=org.url, status=401) == 0


def test_sdk_batch_with_change_set(sdk: tuple[Any, DataverseOrg], sandbox_env: Sandbox) -> None:
    client, org = sdk

    batch = client.batch.new()
    batch.records.create("account", {"name": "Batch account"})
    with batch.changeset() as change_set:
        reference = change_set.records.create("contact", {"firstname": "Alice"})
        change_set.records.update("contact", reference, {"lastname": "Smith"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result = batch.execute()

    assert [item.status_code for item in result.responses] == [204, 204, 204]
    (contact,) = sandbox_env.state.rows(org.url, "contacts")
    assert contact["fullname"] == "Alice Smith"


def test_sdk_reads_a_rolled_back_change_set(sdk: tuple[Any, DataverseOrg], sandbox_env: Sandbox) -> None:
    client, org = sdk
    missing = str(uuid.uuid4())

    batch = client.batch.new()
    with batch.changeset() as change_set:
        change_set.records.create("account", {"name": "Rolled back"})
        change_set.records.update("account", missing, {"name": "No such row"})
    result = batch.execute()

    assert [item.status_code for item in result.responses] == [404]
    assert result.responses[0].error_code == "0x80040217"
    assert sandbox_env.state.rows(org.url, "accounts") == []


def test_sdk_reads_formatted_values_and_expands_lookups(sdk: tuple[Any, DataverseOrg], sandbox_env: Sandbox) -> None:
    client, org = sdk
    records = client.records
    state = sandbox_env.state
    contact = records.create("contact", {"firstname": "Ada", "lastname": "Lovelace"})
    # The SDK turns a choice label into its value through the PicklistAttributeMetadata it reads first.
    account = records.create(
        "account",
        {
            "name": "Contoso",
            "revenue": 2500,
            "industrycode": "Consulting",
            "primarycontactid@odata.bind": f"/contacts({contact})",
        },
    )

    result = (
        client.query.builder("account")
        .select("name", "revenue", "industrycode", "_primarycontactid_value")
        .expand(models_module.ExpandOption("primarycontactid").select("fullname"))
        .include_formatted_values()
        .execute()
    )

    (stored,) = state.rows(org.url, "accounts")
    assert stored["accountid"] == account
    assert stored["industrycode"] == 7
    (row,) = list(result)
    assert row["name"] == "Contoso"
    assert row["industrycode@OData.Community.Display.V1.FormattedValue"] == "Consulting"
    assert row["revenue@OData.Community.Display.V1.FormattedValue"] == "$2,500.00"
    assert row["_primarycontactid_value@OData.Community.Display.V1.FormattedValue"] == "Ada Lovelace"
    assert row["primarycontactid"]["fullname"] == "Ada Lovelace"
    assert row["primarycontactid"]["contactid"] == contact


def test_sdk_pages_through_more_than_five_thousand_rows(sdk: tuple[Any, DataverseOrg], sandbox_env: Sandbox) -> None:
    client, org = sdk
    seeded = set(sandbox_env.state.seed_rows(org.url, "accounts", 5_200, prefix="Bulk"))

    pages = list(client.records.list_pages("account", select=["name"]))
    fetched = list(
        client.query.fetchxml(
            '<fetch><entity name="account"><attribute name="name" /></entity></fetch>'
        ).execute_pages()
    )

    assert [len(page) for page in pages] == [5000, 200]
    assert {row["accountid"] for page in pages for row in page} == seeded
    assert [len(page) for page in fetched] == [5000, 200]
    assert {row["accountid"] for page in fetched for row in page} == seeded
