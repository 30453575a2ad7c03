"""Facts about the server derived from its Rust source, for the deploy tests.

Nothing here is a copy of the server's behaviour: every fact is read from
server/src at test time, so the Terraform module is compared with the code as
it is now.

- :func:`dynamodb_actions`: the IAM actions `serve` and `init-table` need,
  from the AWS SDK calls in server/src/store/dynamodb/*.rs and the call graph
  around them.
- :func:`scope_defaults`: the defaults of --read-scopes / --write-scopes.
- :func:`auth_arg_rules`: which auth settings are required without
  --auth-config and which conflict with it.
- :func:`table_spec`: the table init-table creates (keys, types, billing,
  TTL attribute).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

# --- SDK operations --------------------------------------------------------

#: IAM actions of each DynamoDB SDK fluent call the server may make. A call
#: missing here fails the tests until someone decides its IAM action(s).
#: transact_write_items has no IAM action of its own: IAM authorises each item
#: of the transaction as its item action (see TRANSACT_ITEM_ACTIONS).
OP_ACTIONS: dict[str, frozenset[str] | None] = {
    "get_item": frozenset({"dynamodb:GetItem"}),
    "put_item": frozenset({"dynamodb:PutItem"}),
    "update_item": frozenset({"dynamodb:UpdateItem"}),
    "delete_item": frozenset({"dynamodb:DeleteItem"}),
    "query": frozenset({"dynamodb:Query"}),
    "describe_table": frozenset({"dynamodb:DescribeTable"}),
    "describe_time_to_live": frozenset({"dynamodb:DescribeTimeToLive"}),
    "create_table": frozenset({"dynamodb:CreateTable"}),
    "update_time_to_live": frozenset({"dynamodb:UpdateTimeToLive"}),
    "transact_write_items": None,  # derived from the items built
    "config": frozenset(),  # the client's own settings: no request, no action
}

#: TransactWriteItem builder methods -> the IAM action of that item.
TRANSACT_ITEM_ACTIONS = {
    "put": "dynamodb:PutItem",
    "set_put": "dynamodb:PutItem",
    "update": "dynamodb:UpdateItem",
    "set_update": "dynamodb:UpdateItem",
    "delete": "dynamodb:DeleteItem",
    "set_delete": "dynamodb:DeleteItem",
    "condition_check": "dynamodb:ConditionCheckItem",
    "set_condition_check": "dynamodb:ConditionCheckItem",
}

#: Every operation of the DynamoDB SDK client (aws-sdk-dynamodb 1.104), used
#: when the crate's source is not in the cargo registry. Any of these names
#: called in the store must be in OP_ACTIONS.
SDK_OPERATIONS_FALLBACK = frozenset(
    """
    batch_execute_statement batch_get_item batch_write_item create_backup
    create_global_table create_table delete_backup delete_item
    delete_resource_policy delete_table describe_backup
    describe_continuous_backups describe_contributor_insights
    describe_endpoints describe_export describe_global_table
    describe_global_table_settings describe_import
    describe_kinesis_streaming_destination describe_limits describe_table
    describe_table_replica_auto_scaling describe_time_to_live
    disable_kinesis_streaming_destination enable_kinesis_streaming_destination
    execute_statement execute_transaction export_table_to_point_in_time
    get_item get_resource_policy import_table list_backups
    list_contributor_insights list_exports list_global_tables list_imports
    list_tables list_tags_of_resource put_item put_resource_policy query
    restore_table_from_backup restore_table_to_point_in_time scan tag_resource
    transact_get_items transact_write_items untag_resource
    update_continuous_backups update_contributor_insights update_global_table
    update_global_table_settings update_item
    update_kinesis_streaming_destination update_table
    update_table_replica_auto_scaling update_time_to_live
    """.split()
)


class DerivationError(AssertionError):
    """The source does not have the shape the derivation understands."""


def sdk_operations(repo: pathlib.Path) -> frozenset[str]:
    """The DynamoDB client's operations: from the locked aws-sdk-dynamodb's
    source in the cargo registry when present, else the fallback list."""
    lock = (repo / "Cargo.lock").read_text()
    m = re.search(r'name = "aws-sdk-dynamodb"\nversion = "([^"]+)"', lock)
    if m:
        home = pathlib.Path.home() / ".cargo" / "registry" / "src"
        for ops_dir in home.glob(f"*/aws-sdk-dynamodb-{m.group(1)}/src/operation"):
            ops = frozenset(p.name for p in ops_dir.iterdir() if p.is_dir())
            if ops:
                return ops
    return SDK_OPERATIONS_FALLBACK


# --- Rust lexing -------------------------------------------------------------

_CHAR_LITERAL = re.compile(r"'(?:\\u\{[0-9a-fA-F]+\}|\\.|[^\\'\n])'")


def blank_rust(src: str, keep_strings: bool = False) -> str:
    """`src` with comments (and, unless keep_strings, the insides of string
    and char literals) replaced by spaces; newlines and offsets are kept."""
    out = list(src)
    n = len(src)

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    i = 0
    while i < n:
        c = src[i]
        prev = src[i - 1] if i else " "
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif c in "rb" and not (prev.isalnum() or prev == "_") and re.match(r"(?:br|r)#*\"", src[i:]):
            m = re.match(r"(?:br|r)(#*)\"", src[i:])
            hashes = m.group(1)
            start = i + m.end()
            end = src.find('"' + hashes, start)
            end = n if end < 0 else end
            if not keep_strings:
                blank(start, end)
            i = end + 1 + len(hashes)
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            if not keep_strings:
                blank(i + 1, j)
            i = j + 1
        elif c == "'":
            m = _CHAR_LITERAL.match(src, i)
            if m:
                if not keep_strings:
                    blank(i + 1, m.end() - 1)
                i = m.end()
            else:  # a lifetime
                i += 1
        else:
            i += 1
    return "".join(out)


def matching_brace(code: str, open_at: int) -> int:
    """Index of the `}` closing the `{` at open_at (code must be blanked)."""
    depth = 0
    for k in range(open_at, len(code)):
        if code[k] == "{":
            depth += 1
        elif code[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    raise DerivationError(f"unbalanced braces from offset {open_at}")


@dataclasses.dataclass
class RustFn:
    name: str
    file: str
    body: tuple[int, int]  # offsets of `{` and `}` in the file
    in_impl: str | None  # header of the enclosing impl block, if any


def rust_fns(code: str, file: str) -> list[RustFn]:
    """Functions with bodies in blanked `code`."""
    impls = []
    for m in re.finditer(r"\bimpl\b[^{;]*\{", code):
        open_at = m.end() - 1
        impls.append((open_at, matching_brace(code, open_at), " ".join(m.group(0)[:-1].split())))
    fns = []
    for m in re.finditer(r"\bfn\s+([A-Za-z_]\w*)", code):
        k = m.end()
        while k < len(code) and code[k] not in "{;":
            k += 1
        if k >= len(code) or code[k] == ";":
            continue  # a declaration without a body
        close = matching_brace(code, k)
        impl = next((h for a, b, h in impls if a < m.start() < b), None)
        fns.append(RustFn(m.group(1), file, (k, close), impl))
    return fns


def innermost_fn(fns: list[RustFn], file: str, offset: int) -> RustFn | None:
    inside = [f for f in fns if f.file == file and f.body[0] < offset < f.body[1]]
    return min(inside, key=lambda f: f.body[1] - f.body[0]) if inside else None


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


# --- DynamoDB actions ----------------------------------------------------------

#: The function `init-table` runs (startup::init_table -> DynamoStore::init_table).
INIT_TABLE_ROOT = "init_table"


@dataclasses.dataclass
class DynamoActions:
    serve: frozenset[str]
    init_table: frozenset[str]
    calls: dict[str, list[str]]  # operation -> "file:line in fn" where it is called


def transaction_item_actions(code: str, file: str) -> set[str]:
    """IAM actions of the items put into TransactWriteItem builders."""
    actions = set()
    for m in re.finditer(r"\bTransactWriteItem\s*::\s*builder\s*\(\s*\)", code):
        k = m.end()
        while True:
            mm = re.compile(r"\s*\.\s*(\w+)\s*\(").match(code, k)
            if not mm:
                break
            method = mm.group(1)
            depth, close = 0, mm.end() - 1
            for close in range(mm.end() - 1, len(code)):
                depth += {"(": 1, ")": -1}.get(code[close], 0)
                if depth == 0:
                    break
            k = close + 1
            if method == "build":
                break
            if method not in TRANSACT_ITEM_ACTIONS:
                raise DerivationError(
                    f"{file}:{line_of(code, mm.start())}: TransactWriteItem::builder().{method}(..) is not "
                    f"in TRANSACT_ITEM_ACTIONS: add its IAM action"
                )
            actions.add(TRANSACT_ITEM_ACTIONS[method])
    # Item types built on their own (Update::builder() etc.) count too.
    for m in re.finditer(r"\b(Put|Update|Delete|ConditionCheck)\s*::\s*builder\s*\(", code):
        key = re.sub(r"(?<!^)([A-Z])", r"_\1", m.group(1)).lower()
        actions.add(TRANSACT_ITEM_ACTIONS[key])
    return actions


def dynamodb_actions(server_src: pathlib.Path, sdk_ops: frozenset[str]) -> DynamoActions:
    """The IAM actions `serve` and `init-table` need, from the SDK calls in
    server_src/store/dynamodb/*.rs.

    Every call of a DynamoDB operation (any name in sdk_ops, or any method
    called on something named `client`) must be in OP_ACTIONS. Each call is
    attributed to the function it is in; `init-table` needs what
    DynamoStore::init_table reaches, `serve` what the NoteStore methods and
    the store methods called from the rest of the server (start-up's table
    check) reach, init_table excepted.
    """
    store_dir = server_src / "store" / "dynamodb"
    files = sorted(store_dir.glob("*.rs"))
    if not files:
        raise DerivationError(f"no Rust files in {store_dir}")
    codes = {f.name: blank_rust(f.read_text()) for f in files}

    fns: list[RustFn] = []
    for name, code in codes.items():
        fns += rust_fns(code, name)
    by_name: dict[str, list[RustFn]] = {}
    for f in fns:
        by_name.setdefault(f.name, []).append(f)

    # Operation calls, by function.
    ops_in: dict[int, set[str]] = {}
    calls: dict[str, list[str]] = {}
    unknown = []
    tx_actions: set[str] = set()
    for name, code in codes.items():
        tx_actions |= transaction_item_actions(code, name)
        found = []
        for m in re.finditer(r"\bclient\s*\.\s*([A-Za-z_]\w*)\s*\(", code):
            found.append((m.start(1), m.group(1)))
        for m in re.finditer(r"\.\s*([a-z_][a-z0-9_]*)\s*\(", code):
            if m.group(1) in sdk_ops:
                found.append((m.start(1), m.group(1)))
        for offset, op in sorted(set(found)):
            where = f"{name}:{line_of(code, offset)}"
            if op not in OP_ACTIONS:
                unknown.append(f"{where}: .{op}()")
                continue
            fn = innermost_fn(fns, name, offset)
            if fn is None:
                raise DerivationError(f"{where}: .{op}() outside any function")
            ops_in.setdefault(id(fn), set()).add(op)
            calls.setdefault(op, []).append(f"{where} in {fn.name}")
    if unknown:
        raise DerivationError(
            "DynamoDB calls that OP_ACTIONS (tests/deploy/rust_facts.py) does not know; "
            "add each with its IAM action(s), then the policies: " + ", ".join(unknown)
        )
    if "transact_write_items" in calls and not tx_actions:
        raise DerivationError("transact_write_items is called but no TransactWriteItem item could be read")

    # Call graph: self.f(), Self::f(), DynamoStore::f(), and free functions.
    def callees(fn: RustFn) -> set[str]:
        body = codes[fn.file][fn.body[0] : fn.body[1]]
        out = set()
        for m in re.finditer(r"\b(?:self\s*\.|Self\s*::|DynamoStore\s*::)\s*([A-Za-z_]\w*)\s*\(", body):
            out.add(m.group(1))
        for m in re.finditer(r"(?<![\w.:])([A-Za-z_]\w*)\s*\(", body):
            if any(g.in_impl is None for g in by_name.get(m.group(1), [])):
                out.add(m.group(1))
        return {c for c in out if c in by_name}

    def reach(roots: set[str]) -> set[int]:
        seen: set[int] = set()
        todo = [f for r in roots for f in by_name.get(r, [])]
        while todo:
            f = todo.pop()
            if id(f) in seen:
                continue
            seen.add(id(f))
            for c in callees(f):
                todo += by_name[c]
        return seen

    def actions_of(reached: set[int]) -> frozenset[str]:
        acts: set[str] = set()
        for f in fns:
            if id(f) in reached:
                for op in ops_in.get(id(f), ()):
                    acts |= tx_actions if OP_ACTIONS[op] is None else OP_ACTIONS[op]
        return frozenset(acts)

    if INIT_TABLE_ROOT not in by_name:
        raise DerivationError(f"no fn {INIT_TABLE_ROOT} in {store_dir}: where does init-table start now?")
    trait_methods = {f.name for f in fns if f.in_impl and re.search(r"\bNoteStore\s+for\s+DynamoStore\b", f.in_impl)}
    if not trait_methods:
        raise DerivationError("no `impl NoteStore for DynamoStore` block found")
    store_methods = {f.name for f in fns if f.in_impl and re.fullmatch(r"impl\s+DynamoStore", f.in_impl)}
    external = set()
    for rs in server_src.rglob("*.rs"):
        if store_dir in rs.parents:
            continue
        code = blank_rust(rs.read_text())
        for m in re.finditer(r"(?:\.|DynamoStore\s*::)\s*([A-Za-z_]\w*)\s*\(", code):
            if m.group(1) in store_methods:
                external.add(m.group(1))
    serve_roots = (trait_methods | external) - {INIT_TABLE_ROOT}
    serve_reach = reach(serve_roots)
    init_reach = reach({INIT_TABLE_ROOT})
    orphans = [
        f"{f.file}: {f.name}" for f in fns if ops_in.get(id(f)) and id(f) not in serve_reach | init_reach
    ]
    if orphans:
        raise DerivationError(
            "DynamoDB calls in functions neither serve nor init-table reaches "
            "(extend the roots in dynamodb_actions): " + ", ".join(orphans)
        )
    return DynamoActions(actions_of(serve_reach), actions_of(init_reach), calls)


def string_consts(text: str) -> dict[str, str]:
    """`const NAME: &str = "value";` definitions in Rust source."""
    code = blank_rust(text, keep_strings=True)
    return dict(re.findall(r'\bconst\s+([A-Z][A-Z0-9_]*)\s*:\s*&(?:\'static\s+)?str\s*=\s*"([^"]*)"\s*;', code))


# --- settings -------------------------------------------------------------------


def _arg_attributes(auth_rs: str) -> dict[str, str]:
    """Field name -> the text of its #[arg(...)] attribute, in AuthArgs."""
    code = blank_rust(auth_rs, keep_strings=True)
    m = re.search(r"pub\s+struct\s+AuthArgs\s*\{", code)
    if not m:
        raise DerivationError("no `pub struct AuthArgs` in auth.rs")
    body = code[m.end() : matching_brace(blank_rust(auth_rs), m.end() - 1)]
    out = {}
    for mm in re.finditer(r"#\[arg\(((?:[^()]|\([^()]*\))*)\)\]\s*pub\s+(\w+)\s*:", body):
        out[mm.group(2)] = mm.group(1)
    if not out:
        raise DerivationError("no #[arg(...)] fields in AuthArgs")
    return out


def scope_defaults(auth_rs: str) -> dict[str, list[str]]:
    """{"read": [...], "write": [...]}: the default_value of read_scopes and
    write_scopes (comma-delimited lists) in AuthArgs."""
    attrs = _arg_attributes(auth_rs)
    out = {}
    for level in ("read", "write"):
        attr = attrs.get(f"{level}_scopes")
        if attr is None:
            raise DerivationError(f"AuthArgs has no {level}_scopes field")
        m = re.search(r'\bdefault_value\s*=\s*(?:"([^"]*)"|([A-Z][A-Z0-9_]*)\b)', attr)
        if not m:
            raise DerivationError(f"{level}_scopes has no default_value")
        if m.group(2):  # a constant
            consts = string_consts(auth_rs)
            if m.group(2) not in consts:
                raise DerivationError(f"{level}_scopes' default {m.group(2)} is not a string constant in auth.rs")
            default = consts[m.group(2)]
        else:
            default = m.group(1)
        delim = re.search(r"value_delimiter\s*=\s*'(.)'", attr)
        values = default.split(delim.group(1)) if delim else [default]
        out[level] = [v.strip() for v in values if v.strip()]
    return out


@dataclasses.dataclass
class AuthArgRules:
    env: dict[str, str]  # field -> its NOTES_* variable
    required_without_config: set[str]  # env names required unless --auth-config
    conflict_with_config: set[str]  # env names that may not be set with --auth-config
    config_env: str  # NOTES_AUTH_CONFIG


def auth_arg_rules(auth_rs: str) -> AuthArgRules:
    attrs = _arg_attributes(auth_rs)
    env = {}
    for field, attr in attrs.items():
        m = re.search(r'\benv\s*=\s*"([A-Z0-9_]+)"', attr)
        if m:
            env[field] = m.group(1)
    required = {env[f] for f, a in attrs.items() if re.search(r'required_unless_present\s*=\s*"auth_config"', a)}
    m = re.search(r"conflicts_with_all\s*=\s*\[([^\]]*)\]", attrs.get("auth_config", ""))
    if "auth_config" not in env or not m or not required:
        raise DerivationError("AuthArgs no longer has auth_config with conflicts_with_all and required_unless_present fields")
    conflicts = {env[f] for f in re.findall(r'"(\w+)"', m.group(1)) if f in env}
    return AuthArgRules(env, required, conflicts, env["auth_config"])


# --- the table ----------------------------------------------------------------


@dataclasses.dataclass
class TableSpec:
    keys: dict[str, tuple[str, str]]  # "HASH"/"RANGE" -> (attribute, type)
    billing_mode: str  # as the API spells it, e.g. PAY_PER_REQUEST
    ttl_attribute: str


def _upper_snake(camel: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", camel).upper()


def table_spec(dynamodb_dir: pathlib.Path) -> TableSpec:
    """What init-table creates, from table.rs's create_table and
    update_time_to_live calls and item.rs's attribute-name constants."""
    texts = {f.name: f.read_text() for f in sorted(dynamodb_dir.glob("*.rs"))}
    consts = {}
    for text in texts.values():
        consts.update(string_consts(text))
    table_rs = blank_rust(texts.get("table.rs", ""), keep_strings=True)
    bare = blank_rust(texts.get("table.rs", ""))

    def chain(method: str) -> str:
        m = re.search(r"\.\s*" + method + r"\s*\(\s*\)", bare)
        if not m:
            raise DerivationError(f"table.rs calls no .{method}()")
        end = bare.find(".send()", m.end())
        if end < 0:
            raise DerivationError(f"the .{method}() chain in table.rs has no .send()")
        return table_rs[m.end() : end]

    def value(token: str) -> str:
        token = token.strip()
        if token.startswith('"'):
            return token.strip('"')
        if token not in consts:
            raise DerivationError(f"{token} is not a string constant in store/dynamodb")
        return consts[token]

    def helper_type(helper: str) -> str:
        m = re.search(r"\bfn\s+" + helper + r"\s*\(", bare)
        if not m:
            raise DerivationError(f"no fn {helper} in table.rs")
        open_at = bare.index("{", m.end())
        body = table_rs[open_at : matching_brace(bare, open_at)]
        t = re.search(r"ScalarAttributeType\s*::\s*(\w+)", body)
        if not t:
            raise DerivationError(f"fn {helper} sets no ScalarAttributeType")
        return t.group(1).upper()

    create = chain("create_table")
    billing = re.search(r"\.billing_mode\(\s*BillingMode\s*::\s*(\w+)\s*\)", create)
    types = {}
    for m in re.finditer(r"\.attribute_definitions\(\s*(\w+)\(\s*([^)]*?)\s*\)\s*\)", create):
        types[value(m.group(2))] = helper_type(m.group(1))
    keys = {}
    for m in re.finditer(r"\.key_schema\(\s*\w+\(\s*([^,]+?)\s*,\s*KeyType\s*::\s*(\w+)\s*\)\s*\)", create):
        name = value(m.group(1))
        if name not in types:
            raise DerivationError(f"key {name} has no attribute definition")
        keys[m.group(2).upper()] = (name, types[name])
    ttl = re.search(r"\.attribute_name\(\s*([^)]+?)\s*\)", chain("update_time_to_live"))
    if not billing or set(keys) != {"HASH", "RANGE"} or not ttl:
        raise DerivationError("cannot read billing mode, HASH and RANGE keys and TTL attribute from table.rs")
    return TableSpec(keys, _upper_snake(billing.group(1)), value(ttl.group(1)))
