"""Each consistency check fails when the module or the server is broken.

Every case copies the module (or server/src) to a temporary folder, breaks
the copy in one way, and expects the check of test_consistency.py to raise.
A replacement that no longer matches the files fails loudly, so no case can
silently test nothing. The repository's own files are never touched.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil

import pytest

import checks
import hcl_model
import rust_facts
import server_help
from deploy_paths import EXAMPLE_DIR, MODULE_DIR, REPO


def broken_copy(src: pathlib.Path, dest: pathlib.Path, edits: dict[str, list[tuple[str, str]]]) -> pathlib.Path:
    shutil.copytree(src, dest)
    for rel, replacements in edits.items():
        path = dest / rel
        text = path.read_text()
        for old, new in replacements:
            assert old in text, f"mutation no longer applies: {old!r} not in {rel}"
            text = text.replace(old, new, 1)
        path.write_text(text)
    return dest


def broken_module(tmp_path, edits) -> hcl_model.Module:
    return hcl_model.load_module(broken_copy(MODULE_DIR, tmp_path / "module", edits))


def broken_server_src(tmp_path, edits) -> pathlib.Path:
    return broken_copy(REPO / "server" / "src", tmp_path / "src", edits)


# --- IAM ---------------------------------------------------------------------------

TASK_POLICY_MUTANTS = {
    "action missing": {"iam.tf": [('      "dynamodb:Query",\n', "")]},
    "action extra": {"iam.tf": [('      "dynamodb:UpdateItem",\n', '      "dynamodb:UpdateItem",\n      "dynamodb:Scan",\n')]},
    "wildcard action": {"iam.tf": [('      "dynamodb:GetItem",\n', '      "dynamodb:Get*",\n')]},
    "index resource": {"iam.tf": [("resources = [aws_dynamodb_table.notes.arn]", 'resources = ["${aws_dynamodb_table.notes.arn}/index/*"]')]},
    "any table": {"iam.tf": [("resources = [aws_dynamodb_table.notes.arn]", 'resources = ["*"]')]},
    "second statement": {"iam.tf": [(
        '    resources = [aws_dynamodb_table.notes.arn]\n  }\n}\n',
        '    resources = [aws_dynamodb_table.notes.arn]\n  }\n  statement {\n    actions   = ["dynamodb:Scan"]\n'
        '    resources = [aws_dynamodb_table.notes.arn]\n  }\n}\n',
    )]},
    "extra policy on the task role": {"iam.tf": [(
        "# --- execution role",
        'resource "aws_iam_role_policy_attachment" "task_extra" {\n  role       = aws_iam_role.task.name\n'
        '  policy_arn = "arn:aws:iam::aws:policy/AmazonDynamoDBFullAccess"\n}\n\n# --- execution role',
    )]},
    "task runs as another role": {"ecs.tf": [("task_role_arn            = aws_iam_role.task.arn", "task_role_arn            = aws_iam_role.execution.arn")]},
}


@pytest.mark.parametrize("case", TASK_POLICY_MUTANTS)
def test_task_policy_check_fails(case, tmp_path, actions):
    module = broken_module(tmp_path, TASK_POLICY_MUTANTS[case])
    with pytest.raises(AssertionError):
        checks.check_task_policy(module, actions)


def test_init_table_policy_check_fails(tmp_path, actions):
    module = broken_module(tmp_path, {"iam.tf": [('      "dynamodb:UpdateTimeToLive",\n', "")]})
    with pytest.raises(AssertionError):
        checks.check_init_table_policy(module, actions)


# Changes in the server's code must change what the policies are checked against.
SERVER_MUTANTS = {
    # A new kind of call the mapping does not know.
    "scan instead of query": {"store/dynamodb/mod.rs": [(".query()", ".scan()")]},
    "batch write": {"store/dynamodb/mod.rs": [("self.client\n                .put_item()", "self.client.batch_write_item();\n        self.client\n                .put_item()")]},
    "unknown client method": {"store/dynamodb/mod.rs": [("self.client\n                .put_item()", "self.client.new_api_call();\n        self.client\n                .put_item()")]},
    # A known call, in a new place or a new kind of transaction item.
    "TTL update while serving": {"store/dynamodb/mod.rs": [("self.client\n                .put_item()", "let _ = self.client.update_time_to_live();\n        self.client\n                .put_item()")]},
    "condition check in the transaction": {"store/dynamodb/mod.rs": [("TransactWriteItem::builder().put(put)", "TransactWriteItem::builder().condition_check(put)")]},
    "unknown transaction item": {"store/dynamodb/mod.rs": [("TransactWriteItem::builder().put(put)", "TransactWriteItem::builder().frobnicate(put)")]},
}


@pytest.mark.parametrize("case", SERVER_MUTANTS)
def test_policy_checks_fail_when_the_server_calls_change(case, tmp_path, module, sdk_ops):
    src = broken_server_src(tmp_path, SERVER_MUTANTS[case])
    with pytest.raises(AssertionError):
        derived = rust_facts.dynamodb_actions(src, sdk_ops)
        checks.check_task_policy(module, derived)


def test_init_table_check_fails_when_init_table_calls_change(tmp_path, module, sdk_ops):
    src = broken_server_src(tmp_path, {"store/dynamodb/table.rs": [(
        "        self.wait_until_active(wait).await?;",
        "        self.wait_until_active(wait).await?;\n        let _ = self.client.delete_item();",
    )]})
    with pytest.raises(AssertionError):
        checks.check_init_table_policy(module, rust_facts.dynamodb_actions(src, sdk_ops))


def test_derivation_ignores_comments_and_strings():
    code = rust_facts.blank_rust('// self.client.scan()\nlet s = "client.scan()"; /* .scan() */ let c = \'{\';')
    assert ".scan" not in code and "{" not in code
    assert len(code) == len('// self.client.scan()\nlet s = "client.scan()"; /* .scan() */ let c = \'{\';')


# --- scopes -----------------------------------------------------------------------------

SCOPE_MUTANTS = {
    "scope renamed": {"cognito.tf": [('scope_name        = "read"', 'scope_name        = "reader"')]},
    "identifier renamed": {"cognito.tf": [('identifier   = "notes"', 'identifier   = "notes-api"')]},
    "read scope string": {"cognito.tf": [('read_scope  = "${aws_cognito_resource_server.notes.identifier}/read"', 'read_scope  = "${aws_cognito_resource_server.notes.identifier}/write"')]},
    "flags use another scope": {"ecs.tf": [("NOTES_READ_SCOPES  = local.read_scope", "NOTES_READ_SCOPES  = local.write_scope")]},
}


@pytest.mark.parametrize("case", SCOPE_MUTANTS)
def test_scope_check_fails(case, tmp_path, auth_rs):
    module = broken_module(tmp_path, SCOPE_MUTANTS[case])
    with pytest.raises(AssertionError):
        checks.check_scopes(module, rust_facts.scope_defaults(auth_rs))


def test_scope_check_fails_when_the_servers_default_changes(module, auth_rs):
    default = rust_facts.scope_defaults(auth_rs)["read"][0]
    changed = auth_rs.replace(f'"{default}"', '"notes.read"')
    assert changed != auth_rs
    with pytest.raises(AssertionError):
        checks.check_scopes(module, rust_facts.scope_defaults(changed))


# --- the table --------------------------------------------------------------------------------

TABLE_MUTANTS = {
    "hash key": {"dynamodb.tf": [('hash_key     = "userId"', 'hash_key     = "ownerId"'), ('name = "userId"', 'name = "ownerId"')]},
    "range key type": {"dynamodb.tf": [('name = "noteId"\n    type = "S"', 'name = "noteId"\n    type = "N"')]},
    "keys swapped": {"dynamodb.tf": [('hash_key     = "userId"\n  range_key    = "noteId"', 'hash_key     = "noteId"\n  range_key    = "userId"')]},
    "ttl attribute": {"dynamodb.tf": [('attribute_name = "expiresAt"', 'attribute_name = "ttl"')]},
    "billing": {"dynamodb.tf": [('billing_mode = "PAY_PER_REQUEST"', 'billing_mode = "PROVISIONED"')]},
    "no deletion protection": {"dynamodb.tf": [("deletion_protection_enabled = true", "deletion_protection_enabled = false")]},
    "no point-in-time recovery": {"dynamodb.tf": [("point_in_time_recovery {\n    enabled = true", "point_in_time_recovery {\n    enabled = false")]},
}


@pytest.mark.parametrize("case", TABLE_MUTANTS)
def test_table_check_fails(case, tmp_path, repo):
    module = broken_module(tmp_path, TABLE_MUTANTS[case])
    with pytest.raises(AssertionError):
        checks.check_table(module, rust_facts.table_spec(repo / "server" / "src" / "store" / "dynamodb"))


RUST_TABLE_MUTANTS = {
    "owner attribute renamed": {"store/dynamodb/item.rs": [('OWNER_ATTR: &str = "userId"', 'OWNER_ATTR: &str = "ownerId"')]},
    "ttl attribute renamed": {"store/dynamodb/item.rs": [('EXPIRES_AT_ATTR: &str = "expiresAt"', 'EXPIRES_AT_ATTR: &str = "ttl"')]},
    "provisioned": {"store/dynamodb/table.rs": [("BillingMode::PayPerRequest", "BillingMode::Provisioned")]},
    "numeric sort key": {"store/dynamodb/table.rs": [(".attribute_definitions(string_attribute(NOTE_ID_ATTR))", ".attribute_definitions(number_attribute(NOTE_ID_ATTR))"), ("fn key_element", "fn number_attribute(name: &str) -> AttributeDefinition {\n    ScalarAttributeType::N\n}\n\nfn key_element")]},
}


@pytest.mark.parametrize("case", RUST_TABLE_MUTANTS)
def test_table_check_fails_when_init_table_changes(case, tmp_path, module):
    src = broken_server_src(tmp_path, RUST_TABLE_MUTANTS[case])
    with pytest.raises(AssertionError):
        checks.check_table(module, rust_facts.table_spec(src / "store" / "dynamodb"))


# --- the environment -------------------------------------------------------------------------

ENV_MUTANTS = {
    "unknown variable": {"ecs.tf": [('NOTES_STORE               = "dynamodb"', 'NOTES_STORE               = "dynamodb"\n    NOTES_BOGUS = "1"')]},
    "misspelt variable": {"ecs.tf": [("NOTES_LISTEN              =", "NOTES_LISTEN_ADDRESS      =")]},
    "required setting missing": {"ecs.tf": [("    NOTES_TLS_KEY             = local.run_files.TLS_KEY\n", "")]},
    "issuer with auth config": {"ecs.tf": [("NOTES_AUTH_CONFIG = local.run_files.AUTH_CONFIG", "NOTES_AUTH_CONFIG = local.run_files.AUTH_CONFIG\n    NOTES_ISSUER = local.issuer")]},
    "flags without client ids": {"ecs.tf": [("    NOTES_CLIENT_IDS   = join(\",\", values(local.machine_client_ids))\n", "")]},
    "variable set outside the maps": {"ecs.tf": [("    local.server_env_base,\n", "    local.server_env_base,\n    { NOTES_EXTRA = \"1\" },\n")]},
    "container env from elsewhere": {"ecs.tf": [("environment            = [for k, v in local.server_environment :", "environment            = [for k, v in local.run_files_environment :")]},
    "secret as a variable": {"ecs.tf": [("    stopTimeout = var.grace_period_secs + 10\n", "    stopTimeout = var.grace_period_secs + 10\n    secrets = []\n")]},
}


@pytest.mark.parametrize("case", ENV_MUTANTS)
def test_environment_check_fails(case, tmp_path, settings, auth_rs):
    module = broken_module(tmp_path, ENV_MUTANTS[case])
    with pytest.raises(AssertionError):
        checks.check_environment(module, settings, rust_facts.auth_arg_rules(auth_rs))


def test_environment_check_fails_when_serve_drops_a_setting(module, settings, auth_rs):
    fewer = dataclasses.replace(settings, envs=settings.envs - {"NOTES_TABLE"})
    with pytest.raises(AssertionError):
        checks.check_environment(module, fewer, rust_facts.auth_arg_rules(auth_rs))


def test_environment_check_fails_when_serve_drops_the_admin_listener(module, settings, auth_rs):
    fewer = dataclasses.replace(
        settings,
        envs=settings.envs - {"NOTES_ADMIN_LISTEN"},
        flag_env={f: e for f, e in settings.flag_env.items() if e != "NOTES_ADMIN_LISTEN"},
    )
    with pytest.raises(AssertionError):
        checks.check_environment(module, fewer, rust_facts.auth_arg_rules(auth_rs))
    with pytest.raises(AssertionError):
        checks.check_health_check(module, fewer)


def test_help_parser():
    long_help = """Usage: notes-server serve [OPTIONS] --tls-cert <TLS_CERT>

Options:
      --listen <LISTEN>
          Address to listen on

          [env: NOTES_LISTEN=]
          [default: 0.0.0.0:50051]

      --tls-cert <TLS_CERT>
          Server certificate chain

          [env: NOTES_TLS_CERT=]
  -h, --help
          Print help
"""
    short_help = "Options:\n      --log-json  Log as JSON lines [env: NOTES_LOG_JSON=]\n  -h, --help  Print help\n"
    s = server_help.parse_help(long_help)
    assert s.envs == {"NOTES_LISTEN", "NOTES_TLS_CERT"}
    assert s.flag_env == {"listen": "NOTES_LISTEN", "tls-cert": "NOTES_TLS_CERT"}
    assert s.required_envs == {"NOTES_TLS_CERT"}
    assert server_help.parse_help(short_help).envs == {"NOTES_LOG_JSON"}
    assert server_help.parse_help("Options:\n  --listen <X>  no env\n").envs == set()


# --- the health check and the admin port ----------------------------------------------------------

ADMIN_INGRESS = (
    "  from_port                    = var.admin_port\n  to_port                      = var.admin_port\n"
    "  referenced_security_group_id = aws_security_group.load_balancer.id"
)
HEALTH_EGRESS = (
    "  from_port                    = var.admin_port\n  to_port                      = var.admin_port\n"
    "  referenced_security_group_id = aws_security_group.service.id"
)
ADMIN_BEHIND_A_LISTENER = """
resource "aws_lb_target_group" "admin" {
  name        = "${var.name}-admin"
  target_type = "ip"
  protocol    = "TCP"
  port        = var.admin_port
  vpc_id      = var.vpc_id
}

resource "aws_lb_listener" "admin" {
  load_balancer_arn = aws_lb.this.arn
  port              = var.admin_port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.admin.arn
  }
}
"""
ADMIN_FROM_CLIENTS = """
resource "aws_vpc_security_group_ingress_rule" "admin_from_clients" {
  for_each = toset(var.allowed_cidr_blocks)

  security_group_id = aws_security_group.service.id
  ip_protocol       = "tcp"
  from_port         = var.admin_port
  to_port           = var.admin_port
  cidr_ipv4         = each.value
}
"""

HEALTH_CHECK_MUTANTS = {
    "TCP health check": {"network.tf": [('    protocol            = "HTTP"', '    protocol            = "TCP"')]},
    "health check on the traffic port": {"network.tf": [("    port                = tostring(var.admin_port)", '    port                = "traffic-port"')]},
    "health check on the gRPC port": {"network.tf": [("    port                = tostring(var.admin_port)", "    port                = tostring(var.container_port)")]},
    "health check asks liveness": {"network.tf": [('    path                = "/readyz"', '    path                = "/livez"')]},
    "matcher accepts 503": {"network.tf": [('    matcher             = "200"', '    matcher             = "200-599"')]},
    "health check disabled": {"network.tf": [("    enabled             = true", "    enabled             = false")]},
    "thresholds left to the defaults": {"network.tf": [("    unhealthy_threshold = 3\n", "")]},
    "timeout as long as the interval": {"network.tf": [("    timeout             = 5", "    timeout             = 10")]},
    "admin listener on loopback": {"ecs.tf": [('NOTES_ADMIN_LISTEN        = "0.0.0.0:${var.admin_port}"', 'NOTES_ADMIN_LISTEN        = "127.0.0.1:${var.admin_port}"')]},
    "admin listener left at its default": {"ecs.tf": [('    NOTES_ADMIN_LISTEN        = "0.0.0.0:${var.admin_port}"\n', "")]},
    "admin listener on the gRPC port": {"ecs.tf": [('NOTES_ADMIN_LISTEN        = "0.0.0.0:${var.admin_port}"', 'NOTES_ADMIN_LISTEN        = "0.0.0.0:${var.container_port}"')]},
    "admin listener on a port the health check does not ask": {"ecs.tf": [('NOTES_ADMIN_LISTEN        = "0.0.0.0:${var.admin_port}"', 'NOTES_ADMIN_LISTEN        = "0.0.0.0:${var.listener_port}"')]},
    "admin port not mapped": {"ecs.tf": [(', { containerPort = var.admin_port, protocol = "tcp" }]', "]")]},
    "admin port not admitted": {"network.tf": [(ADMIN_INGRESS, ADMIN_INGRESS.replace("var.admin_port", "var.container_port"))]},
    "admin port admitted from anywhere": {"network.tf": [(ADMIN_INGRESS, ADMIN_INGRESS.replace("referenced_security_group_id = aws_security_group.load_balancer.id", 'cidr_ipv4                    = "0.0.0.0/0"'))]},
    "admin port admitted from the clients' networks": {"network.tf": [("resource \"aws_lb\" \"this\" {", ADMIN_FROM_CLIENTS + "\nresource \"aws_lb\" \"this\" {")]},
    "health checks not let out of the load balancer": {"network.tf": [(HEALTH_EGRESS, HEALTH_EGRESS.replace("var.admin_port", "var.container_port"))]},
    "admin port behind a listener": {"network.tf": [("resource \"aws_lb_listener\" \"grpc\" {", ADMIN_BEHIND_A_LISTENER + "\nresource \"aws_lb_listener\" \"grpc\" {")]},
    "TLS ends at the load balancer": {"network.tf": [('  port              = var.listener_port\n  protocol          = "TCP"', '  port              = var.listener_port\n  protocol          = "TLS"')]},
    "traffic to the admin port": {"network.tf": [("  port        = var.container_port", "  port        = var.admin_port")]},
    "HTTP target group": {"network.tf": [('  protocol    = "TCP"\n  port        = var.container_port', '  protocol    = "HTTP"\n  port        = var.container_port')]},
}


@pytest.mark.parametrize("case", HEALTH_CHECK_MUTANTS)
def test_health_check_check_fails(case, tmp_path, settings):
    module = broken_module(tmp_path, HEALTH_CHECK_MUTANTS[case])
    with pytest.raises(AssertionError):
        checks.check_health_check(module, settings)


# --- the auth config ------------------------------------------------------------------------------

TEMPLATE = checks.TEMPLATE
AUTH_MUTANTS = {
    "unknown key": {TEMPLATE: [('algorithms = ["RS256"]', 'algorithms = ["RS256"]\nbogus = true')]},
    "bad algorithm": {TEMPLATE: [('algorithms = ["RS256"]', 'algorithms = ["HS256"]')]},
    "not TOML": {TEMPLATE: [("[[issuer]]", "[[issuer]")]},
    "users need the machine scope": {TEMPLATE: [('user_scopes = { read = ["aws.cognito.signin.user.admin"]', 'user_scopes = { read = ${jsonencode([read_scope])}')]},
    "machine scopes swapped": {TEMPLATE: [("read = ${jsonencode([read_scope])}, write = ${jsonencode([write_scope])}", "read = ${jsonencode([write_scope])}, write = ${jsonencode([read_scope])}")]},
    "bindings dropped": {TEMPLATE: [("[[binding]]", "# [[binding]]"), ("identity = ", "# identity = "), ("client_ids = ${jsonencode(clients)}", "# client_ids")]},
}


@pytest.mark.parametrize("case", AUTH_MUTANTS)
def test_auth_config_check_fails(case, tmp_path, server_bin, auth_rs):
    module = broken_module(tmp_path, AUTH_MUTANTS[case])
    defaults = rust_facts.scope_defaults(auth_rs)
    values = checks.sample_auth_values()
    with pytest.raises(AssertionError):
        text = checks.render_auth_config(module, values, tmp_path)
        checks.check_auth_config_semantics(text, values, defaults)
        checks.check_server_accepts_auth_config(server_bin, text, tmp_path)


def test_auth_config_check_fails_when_the_module_passes_other_values(tmp_path):
    module = broken_module(tmp_path, {"auth.tf": [("    write_scope     = local.write_scope\n", "")]})
    with pytest.raises(AssertionError):
        checks.render_auth_config(module, checks.sample_auth_values(), tmp_path)


def test_server_check_fails_on_a_file_the_server_refuses(tmp_path, server_bin):
    with pytest.raises(AssertionError):
        checks.check_server_accepts_auth_config(server_bin, 'max_token_bytes = "many"\n', tmp_path)


# --- the init container ------------------------------------------------------------------------------

RUN_FILES_MUTANTS = {
    "a file not written": {"files/write-run-files.sh": [('put CLIENT_CRL "${CLIENT_CRL_FILE:-}" "${CLIENT_CRL:-}"\n', "")]},
    "readable by others": {"files/write-run-files.sh": [('chmod 0400 "$2.tmp"', 'chmod 0644 "$2.tmp"')]},
    "content changed": {"files/write-run-files.sh": [("printf '%s' \"$3\"", "printf '%s\\n' \"$3\"")]},
    "empty secret accepted": {"files/write-run-files.sh": [('  if [ -z "$3" ]; then', '  if false; then')]},
    "a new file the script does not know": {"secrets.tf": [('    AUTH_CONFIG    = "${local.run_dir}/auth.toml"', '    AUTH_CONFIG    = "${local.run_dir}/auth.toml"\n    EXTRA = "${local.run_dir}/extra"')]},
    "server pointed at no file": {"ecs.tf": [("NOTES_TLS_KEY             = local.run_files.TLS_KEY", "NOTES_TLS_KEY             = local.run_files.TLS_PRIVATE_KEY")]},
}


@pytest.mark.parametrize("case", RUN_FILES_MUTANTS)
def test_run_files_check_fails(case, tmp_path):
    module = broken_module(tmp_path, RUN_FILES_MUTANTS[case])
    work = tmp_path / "run"
    work.mkdir()
    with pytest.raises(AssertionError):
        checks.check_run_files(module, work)


TASK_MUTANTS = {
    "unknown log format": {"ecs.tf": [('NOTES_LOG_FORMAT          = "json"', 'NOTES_LOG_FORMAT          = "yaml"')]},
    "grace period not a number": {"ecs.tf": [("NOTES_GRACE_PERIOD_SECS   = tostring(var.grace_period_secs)", 'NOTES_GRACE_PERIOD_SECS   = "20s"')]},
    "key file is the CA": {"ecs.tf": [("NOTES_TLS_KEY             = local.run_files.TLS_KEY", "NOTES_TLS_KEY             = local.run_files.CLIENT_CA")]},
    "CRL file is the certificate": {"ecs.tf": [("NOTES_CLIENT_CRL = local.run_files.CLIENT_CRL", "NOTES_CLIENT_CRL = local.run_files.TLS_CERT")]},
    "script writes the wrong content": {"files/write-run-files.sh": [('put TLS_KEY "${TLS_KEY_FILE:-}" "${TLS_KEY:-}"', 'put TLS_KEY "${TLS_KEY_FILE:-}" "${TLS_CERT:-}"')]},
    # The started server answers the health check's path as no readiness endpoint would.
    "health check asks liveness": {"network.tf": [('    path                = "/readyz"', '    path                = "/livez"')]},
    "health check asks the metrics": {"network.tf": [('    path                = "/readyz"', '    path                = "/metrics"')]},
    "health check asks a path the server lacks": {"network.tf": [('    path                = "/readyz"', '    path                = "/healthz"')]},
}


@pytest.mark.parametrize("case", TASK_MUTANTS)
def test_task_start_check_fails(case, tmp_path, server_bin):
    module = broken_module(tmp_path, TASK_MUTANTS[case])
    text = checks.render_auth_config(module, checks.sample_auth_values(), tmp_path)
    with pytest.raises(AssertionError):
        checks.check_task_starts(module, server_bin, text, tmp_path)


REFERENCE_MUTANTS = {
    "undeclared variable": {"ecs.tf": [("cpu                      = var.cpu", "cpu                      = var.cpus")]},
    "undefined local": {"ecs.tf": [("    local.server_env_base,\n", "    local.server_env_basis,\n")]},
    "missing resource": {"ecs.tf": [("execution_role_arn       = aws_iam_role.execution.arn", "execution_role_arn       = aws_iam_role.exec.arn")]},
    "missing data source": {"iam.tf": [("data.aws_iam_policy_document.execution_secrets.json", "data.aws_iam_policy_document.execution.json")]},
}


@pytest.mark.parametrize("case", REFERENCE_MUTANTS)
def test_reference_check_fails(case, tmp_path):
    module = broken_module(tmp_path, REFERENCE_MUTANTS[case])
    with pytest.raises(AssertionError):
        checks.check_references(module)


EXAMPLE_MUTANTS = {
    "required variable not passed": {"main.tf": [("  image_tag             = var.image_tag\n", "")]},
    "unknown argument": {"main.tf": [("  name                  = var.name\n", "  name                  = var.name\n  replicas              = 3\n")]},
    "unknown output": {"outputs.tf": [("module.notes.endpoint", "module.notes.url")]},
    "undeclared example variable": {"main.tf": [("vpc_id                   = var.vpc_id", "vpc_id                   = var.vpc")]},
}


@pytest.mark.parametrize("case", EXAMPLE_MUTANTS)
def test_example_check_fails(case, tmp_path, module):
    example = broken_copy(EXAMPLE_DIR, tmp_path / "examples" / "basic", EXAMPLE_MUTANTS[case])
    # The copy's relative source must still reach the module.
    shutil.copytree(MODULE_DIR, tmp_path / "modules" / "notes")
    moved = hcl_model.load_module(tmp_path / "modules" / "notes")
    with pytest.raises(AssertionError):
        checks.check_references(hcl_model.load_module(example))
        checks.check_example(example, moved)
