"""The loopback network every stand-in sits on: a test CA and the certificates it signs (pki), the threaded HTTPS
server (httpd) and the CONNECT proxy that tunnels real org host names to the Dataverse stand-in (connect_proxy).

Imports nothing else of the sandbox.
"""
