"""The Key Vault stand-in: the vault's secret and certificate versions and its readers (vault), and the REST API
the real azure-keyvault-secrets client calls (service).

May import sandbox.entra (token checks), sandbox.net and sandbox.faults.
"""
