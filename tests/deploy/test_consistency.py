"""The Terraform module (deploy/terraform/modules/notes) agrees with the server.

Everything the module must match is derived from the server itself, never
copied: the DynamoDB actions from the SDK calls in
server/src/store/dynamodb/*.rs, the scope defaults and auth rules from
server/src/config/auth.rs, the table from init-table's calls in table.rs and
the constants in item.rs, the settings from `notes-server serve --help` (the
binary at NOTES_SERVER_BIN, default target/debug/notes-server), and the
health check's endpoint from how the started server answers it. The HCL is
parsed with python-hcl2. test_checks_fail.py shows that each check fails on
a broken copy.
"""

from __future__ import annotations

import checks
import hcl_model
import rust_facts
from deploy_paths import EXAMPLE_DIR


def test_task_role_may_call_exactly_what_serve_calls(module, actions):
    checks.check_task_policy(module, actions)


def test_init_table_policy_is_what_init_table_calls(module, actions):
    checks.check_init_table_policy(module, actions)


def test_resource_server_scopes_are_the_servers_defaults(module, auth_rs):
    checks.check_scopes(module, rust_facts.scope_defaults(auth_rs))


def test_table_is_the_one_init_table_creates(module, repo):
    checks.check_table(module, rust_facts.table_spec(repo / "server" / "src" / "store" / "dynamodb"))


def test_task_environment_is_real_serve_settings(module, settings, auth_rs):
    checks.check_environment(module, settings, rust_facts.auth_arg_rules(auth_rs))


def test_health_check_is_readyz_on_the_admin_port_only_the_load_balancer_reaches(module, settings):
    checks.check_health_check(module, settings)


def test_rendered_auth_config_is_accepted_by_the_server(module, server_bin, auth_rs, tmp_path):
    defaults = rust_facts.scope_defaults(auth_rs)
    values = checks.sample_auth_values()
    values["read_scope"], values["write_scope"] = defaults["read"][0], defaults["write"][0]
    text = checks.render_auth_config(module, values, tmp_path)
    checks.check_auth_config_semantics(text, values, defaults)
    checks.check_server_accepts_auth_config(server_bin, text, tmp_path)


def test_rendered_auth_config_without_groups_or_bindings(module, server_bin, auth_rs, tmp_path):
    defaults = rust_facts.scope_defaults(auth_rs)
    values = dict(checks.sample_auth_values(), required_groups=[], bindings={}, client_ids=["userclient0123456789"])
    text = checks.render_auth_config(module, values, tmp_path)
    checks.check_auth_config_semantics(text, values, defaults)
    checks.check_server_accepts_auth_config(server_bin, text, tmp_path)


def test_init_container_writes_every_server_file(module, tmp_path):
    checks.check_run_files(module, tmp_path)


def test_task_starts_on_its_own_files_and_environment_and_reports_readiness(module, server_bin, tmp_path):
    text = checks.render_auth_config(module, checks.sample_auth_values(), tmp_path)
    checks.check_task_starts(module, server_bin, text, tmp_path)


def test_module_references_resolve(module):
    checks.check_references(module)


def test_example_uses_the_module_as_declared(module):
    checks.check_references(hcl_model.load_module(EXAMPLE_DIR))
    checks.check_example(EXAMPLE_DIR, module)
