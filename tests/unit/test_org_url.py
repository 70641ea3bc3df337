import pytest

from shared.dataverse.org_url import InvalidOrgUrlError, validate_org_url
from shared.settings import CLOUD_PRESETS

PUBLIC = CLOUD_PRESETS["public"].dataverse_domain_suffixes


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("https://contoso.crm.dynamics.com", "https://contoso.crm.dynamics.com"),
        ("https://Contoso.CRM4.dynamics.com/", "https://contoso.crm4.dynamics.com"),
        ("  https://contoso-dev.crm11.dynamics.com  ", "https://contoso-dev.crm11.dynamics.com"),
        ("https://contoso.crm.dynamics.com:443", "https://contoso.crm.dynamics.com"),
    ],
)
def test_valid_org_urls_are_canonicalised(given, canonical):
    assert validate_org_url(given, PUBLIC) == canonical


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "empty"),
        ("http://contoso.crm.dynamics.com", "https://"),
        ("https://evil.example.com", "Dataverse domain"),
        ("https://contoso.crm.dynamics.com.evil.com", "Dataverse domain"),
        ("https://crm.dynamics.com", "Dataverse domain"),
        ("https://a.b.crm.dynamics.com", "Dataverse domain"),
        ("https://user:pw@contoso.crm.dynamics.com", "user name"),
        ("https://evil.com@contoso.crm.dynamics.com", "user name"),
        ("https://contoso.crm.dynamics.com:8443", "port"),
        ("https://contoso.crm.dynamics.com/api/data/v9.2", "no path"),
        ("https://contoso.crm.dynamics.com?x=1", "query"),
        ("https://contoso.crm.dynamics.com#frag", "query or fragment"),
        ("https://contoso.crm.dynamics.com\r\nHost: evil", "control"),
        ("https://-bad.crm.dynamics.com", "Dataverse domain"),
        ("https://contoso.crm.dynamics.cn", "Dataverse domain"),
        ("https://" + "a" * 400 + ".crm.dynamics.com", "too long"),
    ],
)
def test_invalid_org_urls_say_why(bad, why):
    with pytest.raises(InvalidOrgUrlError, match=why):
        validate_org_url(bad, PUBLIC)


def test_sovereign_suffixes_apply():
    china = CLOUD_PRESETS["china"].dataverse_domain_suffixes
    assert validate_org_url("https://contoso.crm.dynamics.cn", china) == "https://contoso.crm.dynamics.cn"
    with pytest.raises(InvalidOrgUrlError):
        validate_org_url("https://contoso.crm.dynamics.com", china)
