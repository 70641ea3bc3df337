"""Runs the cloud-in-a-box in its own process for benchmarks, so the emulator's CPU does not compete with the
client being measured for one interpreter lock.

Protocol on stdin/stdout, one JSON document per line: the child prints the scenario once ready, then answers
``{"cmd": "counters", "orgs": [...]}`` and ``{"cmd": "limits", ...}``; ``{"cmd": "quit"}`` (or EOF) stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _child(org_count: int, rows_per_org: int, latency: float) -> None:
    sys.path.insert(0, str(ROOT))
    from sandbox import Sandbox
    from sandbox.net.pki import make_certificate

    with Sandbox() as sb:
        st = sb.state
        client_id = st.register_application(display_name="Bench app")
        bundle = make_certificate("bench")
        st.add_application_certificate(client_id, bundle.cert_pem)
        orgs = []
        for i in range(org_count):
            tenant = st.add_tenant(display_name=f"Bench tenant {i}")
            st.grant_consent(tenant, client_id)
            url = f"https://bench{i:02d}.crm.dynamics.com"
            st.add_org(tenant, url)
            st.add_application_user(url, client_id)
            st.seed_rows(url, "accounts", rows_per_org)
            # Documented limits (pad/api-limits): 52 concurrent, 6,000 requests per 300 s, per user.
            st.set_dataverse_limits(url, latency_seconds=latency)
            orgs.append({"tenant": tenant, "url": url})
        scenario = {
            "env": sb.env(),
            "authority_host": sb.authority_host,
            "home_tenant": st.home_tenant_id,
            "client_id": client_id,
            "key_pem": bundle.key_pem,
            "cert_pem": bundle.cert_pem,
            "orgs": orgs,
        }
        print(json.dumps(scenario), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "quit":
                break
            if command["cmd"] == "counters":
                print(
                    json.dumps(
                        {
                            url: {
                                "requests": st.count("dataverse_request", org=url),
                                "throttled": st.count("dataverse_throttled", org=url),
                                "in_retry_after": st.count("dataverse_request_in_retry_after", org=url),
                            }
                            for url in command["orgs"]
                        }
                    ),
                    flush=True,
                )
            elif command["cmd"] == "limits":
                st.set_dataverse_limits(command["org"], **command["limits"])
                print("{}", flush=True)
            elif command["cmd"] == "seed":
                st.seed_rows(command["org"], "accounts", command["rows"])
                print("{}", flush=True)


class SandboxProcess:
    """Parent side: start, talk to, and stop the child."""

    def __init__(self, org_count: int, rows_per_org: int, latency: float) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, str(org_count), str(rows_per_org), str(latency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self._proc.stdout is not None
        self.scenario: dict[str, Any] = json.loads(self._proc.stdout.readline())

    def ask(self, **command: Any) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        return json.loads(self._proc.stdout.readline())

    def cpu_seconds(self) -> float:
        """User + system CPU the emulator process has used so far (from /proc)."""
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self._proc.stdin.close()
            self._proc.wait(timeout=30)

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
