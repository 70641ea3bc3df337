"""The running sandbox seen from outside its process (development only): the development world `make start`
seeds (sandbox.admin.world), its JSON snapshot under .sandbox/ (sandbox.admin.snapshot), the operations a
developer runs against it (sandbox.admin.operations) and the loopback admin endpoint that serves them behind a
random token (sandbox.admin.endpoint). The CLI that talks to it is sandbox.cli.
"""
