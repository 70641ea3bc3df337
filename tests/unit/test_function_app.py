import importlib
import json
import subprocess
import sys
from pathlib import Path

import azure.functions as func

ROOT = Path(__file__).resolve().parents[2]


def fresh_app():
    import function_app

    return importlib.reload(function_app).app


def test_health_is_anonymous_get_and_reveals_no_configuration():
    functions = {f.get_function_name(): json.loads(f.get_function_json()) for f in fresh_app().get_functions()}
    trigger = functions["health"]["bindings"][0]
    assert trigger["authLevel"] == "ANONYMOUS" and trigger["methods"] == ["GET"] and trigger["route"] == "health"
    from functions.health import health

    resp = health(func.HttpRequest("GET", "/api/health", body=b""))
    assert resp.status_code == 200
    assert json.loads(resp.get_body()) == {"status": "ok"}


def test_importing_function_app_does_no_io_and_loads_no_heavy_sdk():
    code = (
        "import sys, socket\n"
        "socket.socket.connect = lambda *a, **k: (_ for _ in ()).throw(RuntimeError('network at import'))\n"
        "import function_app\n"
        "heavy = [m for m in ('msal', 'azure.identity', 'azure.keyvault.secrets', 'requests', 'jwt',"
        " 'cryptography.x509') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PATH": "", "PYTHONPATH": "."},
    )
    assert out.stdout.strip() == ""
