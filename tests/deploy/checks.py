"""The consistency checks between deploy/terraform/modules/notes and the server.

Each check takes the parsed module (and facts derived from the Rust code or
the binary) and raises AssertionError naming what disagrees.
test_consistency.py runs them on the repository; test_checks_fail.py runs
them on broken copies to show each one can fail.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import pathlib
import re
import socket
import subprocess
import time
import tomllib
from typing import Callable

import hcl_model
import rust_facts
import server_help
from hcl_model import Module, as_list, policy_statements, ref

TABLE = "aws_dynamodb_table.notes"
TASK_ROLE = "aws_iam_role.task"
TASK_POLICY_DOC = "task_dynamodb"
INIT_POLICY_DOC = "init_table"
RESOURCE_SERVER = ("aws_cognito_resource_server", "notes")
TARGET_GROUP = ("aws_lb_target_group", "notes")

#: The only scope USER_PASSWORD_AUTH / SRP access tokens carry.
COGNITO_USER_SCOPE = "aws.cognito.signin.user.admin"


# --- IAM ---------------------------------------------------------------------


def _policy_actions(module: Module, doc_name: str) -> set[str]:
    doc = module.datum("aws_iam_policy_document", doc_name)
    actions: set[str] = set()
    for stmt in policy_statements(doc):
        assert stmt.get("effect", "Allow") == "Allow", f"{doc_name}: only Allow statements expected"
        assert "not_actions" not in stmt and "not_resources" not in stmt, f"{doc_name}: no not_* allowed"
        resources = [ref(r) or r for r in as_list(stmt.get("resources", []))]
        assert resources == [f"{TABLE}.arn"], (
            f"{doc_name}: statement resources are {resources}, expected exactly the table ARN ({TABLE}.arn)"
        )
        actions |= set(as_list(stmt.get("actions", [])))
    return actions


def check_task_policy(module: Module, actions: rust_facts.DynamoActions) -> None:
    """The task role may call exactly the DynamoDB actions serve calls, on
    exactly the table, and holds no other policy."""
    got = _policy_actions(module, TASK_POLICY_DOC)
    assert got == set(actions.serve), (
        f"task role policy actions {sorted(got)} != the DynamoDB actions serve calls {sorted(actions.serve)} "
        f"(missing {sorted(set(actions.serve) - got)}, extra {sorted(got - set(actions.serve))}; calls: {actions.calls})"
    )
    attached = []
    for type_ in ("aws_iam_role_policy", "aws_iam_role_policy_attachment"):
        for name, body in module.resources_of(type_).items():
            if (ref(body.get("role")) or "").startswith(TASK_ROLE + "."):
                attached.append((type_, name, ref(body.get("policy"))))
    assert attached == [
        ("aws_iam_role_policy", TASK_POLICY_DOC, f"data.aws_iam_policy_document.{TASK_POLICY_DOC}.json")
    ], f"the task role must hold only the {TASK_POLICY_DOC} policy document, found {attached}"
    td = module.resource("aws_ecs_task_definition", "notes")
    assert ref(td.get("task_role_arn")) == f"{TASK_ROLE}.arn", "the task definition must run as the task role"
    for name, role in module.resources_of("aws_iam_role").items():
        assert not role.get("inline_policy") and not role.get("managed_policy_arns"), (
            f"aws_iam_role.{name}: attach policies with separate resources"
        )


def check_init_table_policy(module: Module, actions: rust_facts.DynamoActions) -> None:
    """The init-table policy holds exactly what init-table calls."""
    got = _policy_actions(module, INIT_POLICY_DOC)
    assert got == set(actions.init_table), (
        f"init-table policy actions {sorted(got)} != the DynamoDB actions init-table calls {sorted(actions.init_table)}"
    )
    policy = module.resource("aws_iam_policy", "init_table")
    assert ref(policy.get("policy")) == f"data.aws_iam_policy_document.{INIT_POLICY_DOC}.json", (
        "aws_iam_policy.init_table must be the init_table policy document"
    )


# --- Cognito scopes ----------------------------------------------------------------


def _resolve(module: Module, text: str) -> str:
    """Substitutes ${aws_cognito_resource_server.notes.identifier} in text."""
    server = module.resource(*RESOURCE_SERVER)
    return text.replace("${%s.%s.identifier}" % RESOURCE_SERVER, server["identifier"])


def check_scopes(module: Module, defaults: dict[str, list[str]]) -> None:
    """The resource server defines the server's default scopes, and the
    module's read/write scope strings are those defaults."""
    server = module.resource(*RESOURCE_SERVER)
    defined = {f"{server['identifier']}/{s['scope_name']}" for s in as_list(server.get("scope", []))}
    wanted = {s for level in ("read", "write") for s in defaults[level]}
    assert defined == wanted, f"resource server scopes {sorted(defined)} != serve's default scopes {sorted(wanted)}"
    for level in ("read", "write"):
        value = _resolve(module, module.local(f"{level}_scope"))
        assert [value] == defaults[level], f"local.{level}_scope is {value!r}; serve's default --{level}-scopes is {defaults[level]}"
        assert ref(module.local("scope_by_name")[level]) == f"local.{level}_scope", f"scope_by_name.{level} is not local.{level}_scope"
    flags = module.local("server_env_auth_flags")
    for level in ("read", "write"):
        var = f"NOTES_{level.upper()}_SCOPES"
        assert ref(flags.get(var)) == f"local.{level}_scope", f"{var} must be local.{level}_scope, is {flags.get(var)}"


# --- DynamoDB table ------------------------------------------------------------------


def check_table(module: Module, spec: rust_facts.TableSpec) -> None:
    """The table is the one init-table creates, with the protections on."""
    t = module.resource("aws_dynamodb_table", "notes")
    types = {a["name"]: a["type"] for a in as_list(t.get("attribute", []))}
    got = {
        "HASH": (t.get("hash_key"), types.get(t.get("hash_key"))),
        "RANGE": (t.get("range_key"), types.get(t.get("range_key"))),
    }
    assert got == spec.keys, f"table keys {got} != init-table's {spec.keys}"
    assert set(types) == {name for name, _ in spec.keys.values()}, (
        f"attribute definitions {types}: only the key attributes may be defined"
    )
    assert t.get("billing_mode") == spec.billing_mode, f"billing_mode {t.get('billing_mode')} != {spec.billing_mode}"
    ttl = as_list(t.get("ttl", [{}]))[0]
    assert ttl.get("attribute_name") == spec.ttl_attribute and ttl.get("enabled") is True, (
        f"TTL {ttl} != enabled on {spec.ttl_attribute}"
    )
    assert as_list(t.get("point_in_time_recovery", [{}]))[0].get("enabled") is True, "point-in-time recovery off"
    assert as_list(t.get("server_side_encryption", [{}]))[0].get("enabled") is True, "server-side encryption off"
    assert t.get("deletion_protection_enabled") is True, "deletion protection off"
    assert "global_secondary_index" not in t and "local_secondary_index" not in t, "init-table creates no index"


# --- the task's environment ------------------------------------------------------------

ENV_LOCAL_PREFIX = "server_env_"
NOTES_VAR = re.compile(r"\bNOTES_[A-Z0-9_]+\b")


def _server_env_maps(module: Module) -> dict[str, dict]:
    maps = {k: v for k, v in module.locals.items() if k.startswith(ENV_LOCAL_PREFIX)}
    assert maps, f"no local {ENV_LOCAL_PREFIX}* maps"
    for k, v in maps.items():
        assert isinstance(v, dict), f"local.{k} must be a literal map of NOTES_* variables"
    return maps


def check_environment(module: Module, settings: server_help.Settings, rules: rust_facts.AuthArgRules) -> None:
    """Every variable the notes container gets is a real serve setting, the
    required ones are set, and the auth settings come in one consistent set."""
    maps = _server_env_maps(module)
    unknown = sorted({name for m in maps.values() for name in m} - settings.envs)
    assert not unknown, f"not settings of `notes-server serve`: {unknown} (serve reads {sorted(settings.envs)})"

    # server_environment merges only those maps.
    merged = module.local("server_environment")
    used = set(re.findall(r"\blocal\.(\w+)", merged))
    assert used and used <= set(maps), f"local.server_environment may merge only local.{ENV_LOCAL_PREFIX}* maps: {used}"
    assert not NOTES_VAR.search(merged), "local.server_environment must not name variables itself"
    assert "var.use_auth_config ? local.server_env_auth_config : local.server_env_auth_flags" in merged, (
        "local.server_environment must take exactly one of the two token configurations"
    )

    # The notes container's environment is exactly local.server_environment.
    container = module.local("server_container_definition")
    assert re.fullmatch(
        r"\$\{\[for (\w+), (\w+) in local\.server_environment : \{name = \1, value = \2\}\]\}", container["environment"]
    ), f"the notes container's environment must come from local.server_environment: {container['environment']}"
    assert "secrets" not in container, "the notes container gets no secrets as variables (run-files writes them)"

    # Any NOTES_* name anywhere in the module is a serve setting.
    anywhere = {name for s in hcl_model.strings(module.locals) for name in NOTES_VAR.findall(s)}
    for group in (module.resources, module.data, module.outputs):
        anywhere |= {name for s in hcl_model.strings(group) for name in NOTES_VAR.findall(s)}
    stray = sorted(anywhere - settings.envs)
    assert not stray, f"NOTES_* names in the module that serve does not read: {stray}"

    # Required settings, and the two ways of configuring tokens.
    base = set(maps["server_env_base"])
    config, flags = set(maps["server_env_auth_config"]), set(maps["server_env_auth_flags"])
    missing = sorted(settings.required_envs - base)
    assert not missing, f"serve requires {missing}, not set in local.server_env_base"
    assert rules.config_env in config, f"local.server_env_auth_config must set {rules.config_env}"
    clash = sorted((config | base) & rules.conflict_with_config)
    assert not clash, f"{clash} conflict with {rules.config_env}"
    missing = sorted(rules.required_without_config - flags)
    assert not missing, f"without {rules.config_env}, serve requires {missing}"
    assert rules.config_env not in flags | base


# --- the auth config template ------------------------------------------------------------

TEMPLATE = "templates/auth.toml.tftpl"
SCRIPT = "files/write-run-files.sh"


def terraform_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(TF_CLI_CONFIG_FILE="/dev/null", CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1")
    return env


def sample_auth_values(port: int = 9) -> dict:
    # A loopback issuer: the server accepts http:// JWKS URLs there only, and
    # nothing listens on port 9, so the test reaches nothing outside.
    return {
        "issuer": f"http://127.0.0.1:{port}/eu-west-1_Deploy",
        "client_ids": ["userclient0123456789", "billingclient0123456"],
        "read_scope": "notes/read",
        "write_scope": "notes/write",
        "required_groups": ["notes-users"],
        "bindings": {"spiffe://example.org/billing": ["billingclient0123456"]},
    }


def render_auth_config(module: Module, values: dict, workdir: pathlib.Path) -> str:
    """templates/auth.toml.tftpl rendered by terraform's own templatefile()
    (terraform console needs no provider), with `values` for exactly the
    variables the module passes."""
    passed = module.local("auth_config_vars")
    assert set(passed) == set(values), f"the module renders the auth config with {sorted(passed)}; the test knows {sorted(values)}"
    call = module.local("auth_config")
    assert call == '${templatefile("${path.module}/%s", local.auth_config_vars)}' % TEMPLATE, call
    # JSON is valid HCL expression syntax for these values.
    expr = f"base64encode(templatefile({json.dumps(str(module.dir / TEMPLATE))}, {json.dumps(values)}))"
    out = subprocess.run(
        ["terraform", "console"], input=expr, capture_output=True, text=True,
        cwd=workdir, env=terraform_env(), timeout=60,
    )
    assert out.returncode == 0, f"terraform console failed: {out.stderr}"
    return base64.b64decode(json.loads(out.stdout.strip().splitlines()[-1])).decode()


def check_auth_config_semantics(text: str, values: dict, defaults: dict[str, list[str]]) -> None:
    """The rendered file says what the module means: users by their Cognito
    scope, machines by the resource server's scopes, the groups and bindings."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AssertionError(f"the rendered auth config is not TOML: {e}\n{text}") from e
    assert set(doc) <= {"issuer", "binding"}, f"top-level keys {sorted(doc)}"
    [issuer] = doc["issuer"]
    assert issuer["issuer"] == values["issuer"]
    assert issuer["client_ids"] == values["client_ids"]
    assert issuer["user_scopes"] == {"read": [COGNITO_USER_SCOPE], "write": [COGNITO_USER_SCOPE]}, issuer["user_scopes"]
    assert issuer["machine_scopes"] == {"read": defaults["read"], "write": defaults["write"]}, issuer["machine_scopes"]
    assert issuer.get("required_groups", []) == values["required_groups"]
    bindings = {b["identity"]: b["client_ids"] for b in doc.get("binding", [])}
    assert bindings == values["bindings"], bindings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pki(server_bin: str, pki: pathlib.Path) -> None:
    """A CA, its empty CRL and a server certificate for localhost, made by
    `notes-server certs` as an operator would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTES_")}
    for args in (["init-ca", "--name", "deploy test CA", "--days", "2"],
                 ["server", "notes", "--dns", "localhost", "--ip", "127.0.0.1", "--days", "2"]):
        subprocess.run([server_bin, "certs", "--certs-dir", str(pki), *args], check=True, capture_output=True, env=env, timeout=30)


def serve_until_listening(
    server_bin: str, args: list[str], env: dict[str, str], what: str,
    while_listening: Callable[[int], None] | None = None,
) -> None:
    """Runs `notes-server serve ARGS --listen 127.0.0.1:PORT --admin-listen
    127.0.0.1:ADMIN` until it listens (its settings were accepted), calls
    while_listening(ADMIN) if given, then stops it; fails if it exits. Both
    addresses are free loopback ports (flags win over the environment), so
    the test neither exposes nor collides on the task's 0.0.0.0 ports."""
    port, admin = _free_port(), _free_port()
    proc = subprocess.Popen(
        [server_bin, "serve", *args, "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"notes-server refused {what}:\n{proc.stdout.read()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"notes-server did not start listening within 15 s on {what}") from None
                time.sleep(0.05)
        if while_listening:
            while_listening(admin)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:PORT/PATH (no proxy), retried while the
    listener is not up yet."""
    deadline = time.monotonic() + 10
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing answers HTTP on 127.0.0.1:{port}") from None
            time.sleep(0.05)
        finally:
            conn.close()


def check_server_accepts_auth_config(server_bin: str, text: str, workdir: pathlib.Path) -> None:
    """The real server starts on the rendered file: parsed (unknown keys are
    refused) and validated; it is listening before any token key is fetched."""
    pki = workdir / "pki"
    make_pki(server_bin, pki)
    (workdir / "page-token-key").write_bytes(os.urandom(32))
    config = workdir / "auth.toml"
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTES_")}
    serve_until_listening(
        server_bin,
        ["--tls-cert", str(pki / "notes.pem"), "--tls-key", str(pki / "notes.key"),
         "--client-ca", str(pki / "ca.pem"), "--client-crl", str(pki / "crl.pem"),
         "--page-token-key-file", str(workdir / "page-token-key"),
         "--auth-config", str(config), "--store", "memory"],
        env, f"the rendered auth config:\n--- file:\n{text}",
    )


def resolve_env_value(module: Module, value, files: dict[str, pathlib.Path]) -> str:
    """A task-definition variable's value with the module's references
    replaced by test stand-ins (run files by the files the init script wrote,
    variables by their defaults); an unknown reference fails."""
    stand_ins = {"local.region": "eu-west-1", "aws_dynamodb_table.notes.name": "notes"}

    def one(m: re.Match) -> str:
        expr = m.group(1).strip()
        inner = re.fullmatch(r"tostring\((.*)\)", expr)
        expr = inner.group(1).strip() if inner else expr
        if expr.startswith("local.run_files."):
            return str(files[expr.removeprefix("local.run_files.")])
        if expr.startswith("var.") and "default" in module.variables.get(expr[4:], {}):
            return str(module.variables[expr[4:]]["default"])
        if expr in stand_ins:
            return stand_ins[expr]
        raise AssertionError(f"the test cannot resolve ${{{expr}}}: give it a stand-in in resolve_env_value")

    if isinstance(value, bool):
        return "true" if value else "false"
    return re.sub(r"\$\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", one, str(value))


def check_task_starts(module: Module, server_bin: str, auth_text: str, workdir: pathlib.Path) -> None:
    """The task as the module defines it, short of AWS: secret contents made
    by `notes-server certs`, written to files by the init container's script,
    then notes-server started with the module's NOTES_* environment (token
    checks by the auth config, the CRL on) resolved against those files.
    Only --listen and --admin-listen (loopback, free ports) and --store
    memory (no AWS) are overridden, by flags, which win over the environment.

    While it runs, the load balancer's health check is asked as the target
    group defines it: its path on the admin listener must answer 503 with a
    reason, because the task cannot be ready (the sample issuer's keys are
    on a loopback port where nothing listens). A liveness path or /metrics
    would answer 200 there, a path the server lacks 404."""
    pki = workdir / "pki"
    make_pki(server_bin, pki)
    run = workdir / "run"
    run.mkdir()
    contents = {
        "TLS_CERT": (pki / "notes.pem").read_text(),
        "TLS_KEY": (pki / "notes.key").read_text(),
        "CLIENT_CA": (pki / "ca.pem").read_text(),
        "CLIENT_CRL": (pki / "crl.pem").read_text(),
        "PAGE_TOKEN_KEY": os.urandom(32).hex(),  # as `openssl rand -hex 32` would
        "AUTH_CONFIG": auth_text,
    }
    run_files = module.local("run_files")
    assert set(run_files) == set(contents), f"run files {sorted(run_files)}: the test knows {sorted(contents)}"
    files = {name: run / pathlib.Path(path).name for name, path in run_files.items()}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUN_OWNER": f"{os.getuid()}:{os.getgid()}"}
    for name, content in contents.items():
        env[name], env[f"{name}_FILE"] = content, str(files[name])
    out = subprocess.run(["sh", "-c", (module.dir / SCRIPT).read_text()], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{SCRIPT} failed: {out.stderr}"

    maps = _server_env_maps(module)
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("NOTES_")}
    for part in ("server_env_base", "server_env_crl", "server_env_auth_config"):
        for var, value in maps[part].items():
            server_env[var] = resolve_env_value(module, value, files)
    health_check = as_list(module.resource(*TARGET_GROUP).get("health_check", [{}]))[0]

    def ask_health_check(admin_port: int) -> None:
        path = health_check.get("path")
        assert isinstance(path, str) and path.startswith("/"), f"the health check has no path: {health_check}"
        status, body = http_get(admin_port, path)
        assert status == 503 and body.strip(), (
            f"GET {path} on the admin listener of a task that cannot be ready answered {status} {body!r}; "
            "the health check must ask the readiness endpoint (503 with a reason until ready)"
        )

    serve_until_listening(
        server_bin, ["--store", "memory"], server_env, f"the task's environment {server_env}", ask_health_check,
    )


# --- the load balancer's health check and the admin port ------------------------------

SERVICE_SG = "aws_security_group.service.id"
LOAD_BALANCER_SG = "aws_security_group.load_balancer.id"
#: The admin listener's readiness endpoint (README.md, "Operating it");
#: check_task_starts shows the server answers it as one.
READINESS_PATH = "/readyz"
SG_SOURCES = ("cidr_ipv4", "cidr_ipv6", "prefix_list_id", "referenced_security_group_id")


def _port_expr(value) -> str:
    """The expression of a port: "${var.x}" and "${tostring(var.x)}" ->
    "var.x"; a literal stays as it is ("traffic-port", 9464)."""
    r = ref(value)
    if r is None:
        return str(value)
    inner = re.fullmatch(r"tostring\((.*)\)", r)
    return inner.group(1).strip() if inner else r


def _listen_port(module: Module, settings: server_help.Settings, flag: str) -> str:
    """The port expression of the serve setting behind --FLAG (its variable
    as `serve --help` names it), which must listen on every interface."""
    env = settings.flag_env.get(flag)
    assert env, f"`notes-server serve --help` lists no --{flag}"
    value = _server_env_maps(module)["server_env_base"].get(env)
    assert value is not None, f"local.server_env_base must set {env} (--{flag}): the load balancer must reach it"
    m = re.fullmatch(r"0\.0\.0\.0:\$\{([^{}]+)\}", str(value))
    assert m, f"{env} = {value!r}: must be 0.0.0.0:${{<port>}}, reachable from outside the task"
    return _port_expr("${%s}" % m.group(1))


def _sg_rules(module: Module, kind: str, group: str) -> dict[str, dict]:
    return {
        name: rule for name, rule in module.resources_of(f"aws_vpc_security_group_{kind}_rule").items()
        if ref(rule.get("security_group_id")) == group
    }


def check_health_check(module: Module, settings: server_help.Settings) -> None:
    """Clients get TCP passthrough to the gRPC port and nothing else; the
    load balancer health-checks HTTP GET /readyz on the admin port, which
    the task listens on (NOTES_ADMIN_LISTEN), maps, and admits from the load
    balancer's security group only."""
    data = _listen_port(module, settings, "listen")
    admin = _listen_port(module, settings, "admin-listen")
    assert admin != data, f"the admin listener and the gRPC listener share the port {admin}"

    # The data plane: TCP passthrough to the gRPC port.
    tg = module.resource(*TARGET_GROUP)
    tg_ref = "%s.%s.arn" % TARGET_GROUP
    assert tg.get("protocol") == "TCP" and _port_expr(tg.get("port")) == data, (
        f"the target group must pass TCP through to {data}: protocol {tg.get('protocol')}, port {tg.get('port')}"
    )
    for name, group in module.resources_of("aws_lb_target_group").items():
        assert _port_expr(group.get("port")) != admin, f"aws_lb_target_group.{name} sends client traffic to the admin port"
    listeners = module.resources_of("aws_lb_listener")
    assert listeners, "no load balancer listener"
    for name, listener in listeners.items():
        assert listener.get("protocol") == "TCP", (
            f"aws_lb_listener.{name} is {listener.get('protocol')}: TLS must pass through (TCP) to the server"
        )
        assert "certificate_arn" not in listener and "ssl_policy" not in listener, f"aws_lb_listener.{name} terminates TLS"
        actions = as_list(listener.get("default_action", []))
        assert [(a.get("type"), ref(a.get("target_group_arn"))) for a in actions] == [("forward", tg_ref)], (
            f"aws_lb_listener.{name} must only forward to {tg_ref}: {actions}"
        )
    service = module.resource("aws_ecs_service", "notes")
    lbs = as_list(service.get("load_balancer", []))
    assert [(ref(b.get("target_group_arn")), _port_expr(b.get("container_port"))) for b in lbs] == [(tg_ref, data)], (
        f"the ECS service must register the gRPC port {data} in {tg_ref}: {lbs}"
    )

    # The health check.
    hcs = as_list(tg.get("health_check", []))
    assert len(hcs) == 1, f"the target group needs one health_check block, has {len(hcs)}"
    hc = hcs[0]
    assert hc.get("enabled", True) is True, "the health check is disabled"
    assert hc.get("protocol") == "HTTP", f"the health check must be HTTP (the admin listener is plain HTTP), is {hc.get('protocol')}"
    assert hc.get("path") == READINESS_PATH, f"the health check must GET {READINESS_PATH}, asks {hc.get('path')}"
    assert _port_expr(hc.get("port")) == admin, f"the health check must ask the admin port {admin}, asks {hc.get('port')}"
    assert str(hc.get("matcher")) == "200", f"only 200 means ready (503: not ready or draining); matcher {hc.get('matcher')}"
    interval, timeout = hc.get("interval"), hc.get("timeout")
    healthy, unhealthy = hc.get("healthy_threshold"), hc.get("unhealthy_threshold")
    for key, value in (("interval", interval), ("timeout", timeout), ("healthy_threshold", healthy), ("unhealthy_threshold", unhealthy)):
        assert value is not None, f"set health_check.{key} (the provider's defaults differ by protocol)"
    if all(isinstance(v, int) for v in (interval, timeout, healthy, unhealthy)):
        assert 5 <= interval <= 300 and 2 <= timeout < interval, f"health check interval {interval} s, timeout {timeout} s"
        assert 2 <= healthy <= 10 and 2 <= unhealthy <= 10, f"health check thresholds {healthy}/{unhealthy} must be 2-10"

    # The task listens on the admin port and maps it.
    container = module.local("server_container_definition")
    mapped = {_port_expr(m.get("containerPort")) for m in as_list(container.get("portMappings", []))}
    assert mapped == {data, admin}, f"the notes container must map exactly the gRPC and admin ports {sorted({data, admin})}: {sorted(mapped)}"

    # Only the load balancer reaches the tasks, on those two ports; the load
    # balancer's own security group (which applies to its health checks)
    # lets them out, and admits clients on nothing but the listener port.
    for name, body in module.resources_of("aws_security_group").items():
        assert "ingress" not in body and "egress" not in body, f"aws_security_group.{name}: rules must be separate resources"
    assert not module.resources_of("aws_security_group_rule"), "use aws_vpc_security_group_*_rule resources only"
    ingress = _sg_rules(module, "ingress", SERVICE_SG)
    ports = set()
    for name, rule in ingress.items():
        sources = {k: rule[k] for k in SG_SOURCES if k in rule}
        assert sources == {"referenced_security_group_id": "${%s}" % LOAD_BALANCER_SG}, (
            f"aws_vpc_security_group_ingress_rule.{name} admits {sources} to the tasks: only the load balancer's security group may"
        )
        assert rule.get("ip_protocol") == "tcp", f"aws_vpc_security_group_ingress_rule.{name}: tcp only"
        ports.add((_port_expr(rule.get("from_port")), _port_expr(rule.get("to_port"))))
    assert ports == {(data, data), (admin, admin)}, (
        f"the tasks must admit exactly the gRPC port {data} and the admin port {admin} from the load balancer: {sorted(ports)}"
    )
    egress = _sg_rules(module, "egress", LOAD_BALANCER_SG)
    out = {
        (_port_expr(r.get("from_port")), _port_expr(r.get("to_port"))) for r in egress.values()
        if ref(r.get("referenced_security_group_id")) == SERVICE_SG
    }
    assert (admin, admin) in out, f"the load balancer's security group does not let its health checks out to {admin}: {sorted(out)}"
    listener_ports = {_port_expr(listener.get("port")) for listener in listeners.values()}
    for name, rule in _sg_rules(module, "ingress", LOAD_BALANCER_SG).items():
        got = {_port_expr(rule.get("from_port")), _port_expr(rule.get("to_port"))}
        assert got <= listener_ports, f"aws_vpc_security_group_ingress_rule.{name} opens {sorted(got)} on the load balancer, not a listener port"


# --- the run-files init container ---------------------------------------------------------



def check_run_files(module: Module, workdir: pathlib.Path) -> None:
    """The init script writes every file the module defines, with the
    content it was given, mode 0400; and every file setting of the server
    points at one of them."""
    run_files = module.local("run_files")
    files = {name: workdir / pathlib.Path(path.replace("${local.run_dir}", "")).name for name, path in run_files.items()}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUN_OWNER": f"{os.getuid()}:{os.getgid()}"}
    for name, path in files.items():
        env[name] = f"{name} content\nline 2\n"
        env[f"{name}_FILE"] = str(path)
    out = subprocess.run(["sh", "-c", (module.dir / SCRIPT).read_text()], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{SCRIPT} failed: {out.stderr}"
    for name, path in files.items():
        assert path.is_file(), f"{SCRIPT} did not write {name} (its {name}_FILE)"
        assert path.read_text() == env[name], f"{SCRIPT} changed {name}'s content"
        assert path.stat().st_mode & 0o777 == 0o400, f"{path} has mode {oct(path.stat().st_mode)}"
    leftovers = [p.name for p in workdir.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, leftovers

    # An empty secret stops the task instead of starting the server on an empty file.
    bad = dict(env, TLS_KEY="", TLS_KEY_FILE=str(workdir / "empty"))
    out = subprocess.run(["sh", "-c", (module.dir / SCRIPT).read_text()], env=bad, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "TLS_KEY is empty" in out.stderr, out

    # Every file path the server is given is one the init container writes.
    for m in _server_env_maps(module).values():
        for var, value in m.items():
            r = ref(value) or ""
            if r.startswith("local.run_files."):
                assert r.removeprefix("local.run_files.") in run_files, f"{var} points at no run file: {r}"


# --- references (what `terraform validate` would catch first) -----------------------------------

REF_PATTERNS = {
    "var": re.compile(r"(?<![\w.])var\.(\w+)"),
    "local": re.compile(r"(?<![\w.])local\.(\w+)"),
    "data": re.compile(r"(?<![\w.])data\.(aws_\w+)\.(\w+)"),
    "resource": re.compile(r"(?<![\w.])(aws_\w+)\.(\w+)"),
    "module": re.compile(r"(?<![\w.])module\.(\w+)\.(\w+)"),
}


def check_references(module: Module) -> None:
    """Every var., local., data., resource and module output reference in the
    module resolves to something it declares. (terraform validate cannot run
    here: it needs the provider.)"""
    texts = list(hcl_model.strings(module.locals))
    for group in (module.resources, module.data, module.outputs, module.variables):
        texts += hcl_model.strings(group)
    bad = set()
    for text in texts:
        if "${" not in text and not re.fullmatch(r"[\w.\[\]\"]+", text):
            continue  # a plain string, not an expression
        bad |= {f"var.{v}" for v in REF_PATTERNS["var"].findall(text) if v not in module.variables}
        bad |= {f"local.{v}" for v in REF_PATTERNS["local"].findall(text) if v not in module.locals}
        bad |= {f"data.{t}.{n}" for t, n in REF_PATTERNS["data"].findall(text) if (t, n) not in module.data}
        without_data = REF_PATTERNS["data"].sub("", text)
        bad |= {f"{t}.{n}" for t, n in REF_PATTERNS["resource"].findall(without_data) if (t, n) not in module.resources}
    assert not bad, f"{module.dir}: references to nothing declared: {sorted(bad)}"


def check_example(example_dir: pathlib.Path, module: Module) -> None:
    """The example passes every required variable of the module, only
    variables the module declares, and uses only outputs it has."""
    example = hcl_model.load_module(example_dir)
    blocks = {}
    for path in sorted(example_dir.glob("*.tf")):
        doc = hcl_model._parse(path.read_text())
        for block in doc.get("module", []):
            blocks.update(block)
    assert "notes" in blocks, f"{example_dir}: no module \"notes\""
    call = blocks["notes"]
    assert (example_dir / call["source"]).resolve() == module.dir.resolve(), call["source"]
    meta = {"source", "version", "providers", "count", "for_each", "depends_on"}
    args = set(call) - meta
    unknown = sorted(args - set(module.variables))
    required = {n for n, v in module.variables.items() if "default" not in v}
    missing = sorted(required - args)
    assert not unknown and not missing, f"example: unknown module arguments {unknown}, missing {missing}"
    used = set()
    for group in (example.outputs, example.locals, example.resources):
        for text in hcl_model.strings(group):
            used |= {o for m, o in REF_PATTERNS["module"].findall(text) if m == "notes"}
    assert used <= set(module.outputs), f"example uses outputs the module lacks: {sorted(used - set(module.outputs))}"
    bad = {f"var.{v}" for text in hcl_model.strings(call) for v in REF_PATTERNS["var"].findall(text) if v not in example.variables}
    assert not bad, f"the example's module block references undeclared {sorted(bad)}"
