"""The seams between the rooms: what a stage may import, what `contracts` may do, who writes each table.

1. Stages talk through Kafka, `contracts` and `runtime`: a stage imports of another stage only that
   stage's published read modules (PUBLIC); the response-centre service also hosts the registry
   library (its pages and API call the registry's operations, `from registry import ...`).
2. `contracts` is wire formats only: no stage, no runtime, no client of Kafka, MQTT or a database, no
   network, process or thread library, and no file writes.
3. Every table has one owner, named by an `-- owner: <package>: <table>` line in a migration's header
   (a later migration may hand it on with `-- owner moved: <table>: <from> -> <to>`); only the
   owner's code writes it, and any other package reads it through the owner's read module, or in
   SQL only the relations the owner publishes (`-- published: <package>: <relation>`).

Each rule has a planted case below that shows its checker can fail.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = {
    "ingest": REPO / "ingest",
    "streams": REPO / "streams",
    "alerts": REPO / "alerts",
    "registry": REPO / "registry",
    "gateway_sim": REPO / "gateway-sim" / "gateway_sim",
}
PIPELINE = {*STAGES, "contracts"}
# A stage's published read interface, which other stages may import (nothing else of it).
# `streams.monitor.replay` is the monitor's pure what-if replay, which the console runs on a change.
PUBLIC = {"streams.archive.read", "streams.archive.fhir", "registry.read", "streams.monitor.replay"}
# The response-centre service runs the registry's operations in its console and API: it may import
# the registry library's front (`registry/__init__.py`: Registry, Actor, errors, settings), not its
# modules.
HOSTED = {"alerts": {"registry"}}

MIGRATIONS = REPO / "infra" / "postgres" / "migrations"
OWNERS = {"ingest", "streams.archive", "streams.monitor", "alerts", "registry", "runtime"}


# ---------------------------------------------------------------- imports
def _roots_of(path: Path) -> set[str]:
    """Top-level package names a file imports (absolute imports, anywhere in the file)."""
    return {module.split(".")[0] for module in _modules_of(path)}


def _is_module(dotted: str) -> bool:
    parts = dotted.split(".")
    base = STAGES.get(parts[0], REPO / parts[0]).joinpath(*parts[1:])
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _modules_of(path: Path) -> set[str]:
    """Full module names a file imports (absolute imports, anywhere in the file); `from a import b`
    counts as `a.b` when b is a module of the repository."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                modules.add(full if _is_module(full) else node.module)
    return modules


def _imported_roots(package_dir: Path) -> dict[str, set[str]]:
    """file -> top-level package names it imports."""
    return {str(path.relative_to(REPO)): _roots_of(path) for path in package_dir.rglob("*.py")}


def _foreign(stage: str, modules: set[str]) -> set[str]:
    """What of another stage `modules` reaches that is not published to `stage`."""
    allowed = PUBLIC | HOSTED.get(stage, set())
    return {m for m in modules if m.split(".")[0] in PIPELINE - {stage, "contracts"} and m not in allowed}


@pytest.mark.parametrize("stage", sorted(set(STAGES) - {"gateway_sim"}))
def test_stage_imports_only_contracts_of_the_pipeline(stage: str) -> None:
    for path in STAGES[stage].rglob("*.py"):
        foreign = _foreign(stage, _modules_of(path))
        assert not foreign, (
            f"{path.relative_to(REPO)} imports {sorted(foreign)}; stages share only `contracts`, Kafka "
            f"topics and the published read interfaces {sorted(PUBLIC)}"
        )


def test_simulator_imports_nothing_of_the_pipeline() -> None:
    """The simulator stands in for a real kit: it knows the published JSON Schemas, not our code."""
    for path, roots in _imported_roots(STAGES["gateway_sim"]).items():
        foreign = roots & PIPELINE - {"gateway_sim"}
        assert not foreign, (
            f"{path} imports {sorted(foreign)}; the simulator may only use contracts/schemas/*.json"
        )


def test_runtime_imports_no_stage() -> None:
    """The runtime kernel sits under every stage: it may use `contracts`, never a stage."""
    for path, roots in _imported_roots(REPO / "runtime").items():
        assert not roots & set(STAGES), f"{path} imports {sorted(roots & set(STAGES))}"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """Guard against a checker that can never fail: a planted cross-stage import is found, and so is
    a registry module other than its read API, even in the service that hosts the registry."""
    planted = tmp_path / "bad.py"
    planted.write_text(
        "import json\nfrom streams.rules import evaluate\nfrom registry import read, store\n"
        "from registry import Registry\n\ndef f():\n    import alerts.queue\n"
    )
    assert _roots_of(planted) & PIPELINE == {"streams", "alerts", "registry"}
    modules = _modules_of(planted)
    assert _foreign("ingest", modules) == {"streams.rules", "alerts.queue", "registry.store", "registry"}
    assert _foreign("alerts", modules) == {"streams.rules", "registry.store"}


# ---------------------------------------------------------------- contracts: no I/O
_IO_LIBRARIES = {
    *STAGES, "runtime", "kafka", "confluent_kafka", "paho", "aiomqtt", "psycopg", "psycopg_pool",
    "sqlite3", "faust", "socket", "ssl", "http", "urllib", "requests", "httpx", "subprocess",
    "threading", "multiprocessing", "asyncio", "concurrent", "shutil",
}  # fmt: skip
_WRITING_METHODS = {"write_text", "write_bytes", "mkdir", "touch", "unlink", "rmdir", "symlink_to"}
_WRITING_OS = {"open", "remove", "unlink", "rename", "replace", "makedirs", "mkdir", "rmdir", "write"}


def _file_writes(path: Path) -> list[str]:
    """Calls in a file that write, create or remove files: `open(..., "w")`, Path.write_text, os.remove..."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            mode = (
                node.args[1]
                if len(node.args) > 1
                else next((k.value for k in node.keywords if k.arg == "mode"), None)
            )
            reading = mode is None or (
                isinstance(mode, ast.Constant) and set(str(mode.value)) <= {"r", "b", "t"}
            )
            if not reading:
                found.append(f"line {node.lineno}: open() for writing")
        elif isinstance(func, ast.Attribute):
            os_call = isinstance(func.value, ast.Name) and func.value.id == "os"
            if func.attr in _WRITING_METHODS or (os_call and func.attr in _WRITING_OS):
                found.append(f"line {node.lineno}: {func.attr}()")
    return found


def test_contracts_do_no_io() -> None:
    """The contracts are pure: no stage, no runtime, no client or network library, no file writes
    (the committed schema files are written by infra/schemas.py)."""
    for path in (REPO / "contracts").rglob("*.py"):
        roots = _roots_of(path) & _IO_LIBRARIES
        assert not roots, f"{path.relative_to(REPO)} imports {sorted(roots)}; contracts do no I/O"
        writes = _file_writes(path)
        assert not writes, f"{path.relative_to(REPO)} writes files ({'; '.join(writes)}); contracts do no I/O"


def test_the_checker_sees_io_in_contracts(tmp_path: Path) -> None:
    """Guard: a planted socket import and three kinds of file write are found; reading is not a write."""
    planted = tmp_path / "bad.py"
    planted.write_text(
        "import socket\nimport os\nfrom pathlib import Path\n"
        "Path('a').write_text('x')\nopen('b', 'w')\nos.remove('c')\n"
        "open('d').read()\nopen('e', 'rb').read()\nPath('f').read_text()\n"
    )
    assert _roots_of(planted) & _IO_LIBRARIES == {"socket"}
    assert [w.split(":")[0] for w in _file_writes(planted)] == ["line 4", "line 5", "line 6"]


# ---------------------------------------------------------------- table ownership
_OWNER_LINE = re.compile(r"^-- owner: ([a-z_.]+): ([a-z_]+)\s*$", re.M)
_MOVED_LINE = re.compile(r"^-- owner moved: ([a-z_]+): ([a-z_.]+) -> ([a-z_.]+)\s*$", re.M)
_PUBLISHED_LINE = re.compile(r"^-- published: ([a-z_.]+): ([a-z_]+)\s*$", re.M)
_CREATES = re.compile(
    r"\bCREATE\s+(?:MATERIALIZED\s+)?(?:TABLE|VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:[a-z_]+\.)?([a-z_]+)"
)
_NAME = r"(?:[a-z_]+\.)?([a-z_]+)\b"
# SQL keywords are written in capitals in this code base; prose ("copy it from") is not matched.
_WRITES = [
    re.compile(rf"\bINSERT\s+INTO\s+{_NAME}"),
    re.compile(rf"\bUPDATE\s+{_NAME}(?!\s+OF\b)"),
    re.compile(rf"\bDELETE\s+FROM\s+{_NAME}"),
    re.compile(rf"\bCOPY\s+{_NAME}[^;]*?\bFROM\b"),
    re.compile(rf"\bTRUNCATE\s+(?:TABLE\s+)?{_NAME}"),
    re.compile(rf"\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_NAME}"),
    re.compile(rf"\bCREATE\s+(?:TEMP(?:ORARY)?\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}"),
    re.compile(rf"\bCREATE\s+(?:UNIQUE\s+)?INDEX\b[^;]*?\bON\s+(?:ONLY\s+)?{_NAME}"),
]
_READS = re.compile(rf"(?<!DELETE )\b(?:FROM|JOIN)\s+{_NAME}")
# Code that scans no owner's rules: the tests and benchmarks set up their own data, and the migration
# runner applies every owner's migrations.
_EXEMPT = ("tests/", "bench/", "infra/migrate.py", "infra/postgres/migrations/")
_SCANNED = ["ingest", "streams", "alerts", "registry", "contracts", "runtime", "gateway-sim", "infra"]


def owners(directory: Path = MIGRATIONS) -> dict[str, str]:
    """table -> owning package, from the `-- owner:` lines of every migration (each table once) and
    the `-- owner moved:` lines of later ones, in migration order."""
    found: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        for package, table in _OWNER_LINE.findall(text):
            assert table not in found, f"{path.name} names a second owner of {table} ({found[table]})"
            assert package in OWNERS, f"{path.name}: {package} is not a package that may own a table"
            found[table] = package
        for table, old, new in _MOVED_LINE.findall(text):
            assert found.get(table) == old, (
                f"{path.name} moves {table} from {old}, but its owner is {found.get(table)}"
            )
            assert new in OWNERS, f"{path.name}: {new} is not a package that may own a table"
            found[table] = new
    return found


def published(directory: Path = MIGRATIONS, table_owners: dict[str, str] | None = None) -> set[str]:
    """The relations their owners publish for other packages to read in SQL (`-- published:` lines)."""
    table_owners = owners(directory) if table_owners is None else table_owners
    found = set()
    for path in sorted(directory.glob("*.sql")):
        for package, relation in _PUBLISHED_LINE.findall(path.read_text(encoding="utf-8")):
            assert table_owners.get(relation) == package, (
                f"{path.name}: {package} publishes {relation}, not its own"
            )
            found.add(relation)
    return found


def _created(directory: Path = MIGRATIONS) -> set[str]:
    return {t for p in directory.glob("*.sql") for t in _CREATES.findall(p.read_text(encoding="utf-8"))}


def _sql_texts(path: Path) -> Iterator[str]:
    """The SQL a file can hold: a .sql file's text, or a Python file's string literals (f-strings with
    `{}` for each field), docstrings left out."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".sql":
        yield text
        return
    tree = ast.parse(text, filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def _package_of(relative: str) -> str:
    parts = Path(relative).parts
    if parts[0] == "streams" and len(parts) > 2:
        return f"streams.{parts[1]}"
    return parts[0]


def crossings(
    files: dict[str, Path], table_owners: dict[str, str], public: Collection[str] = ()
) -> set[tuple[str, str, str]]:
    """(file, "writes" | "reads", table) for each table a file touches that its package does not own;
    reading a `public` relation is not a crossing, writing one is."""
    found = set()
    for relative, path in files.items():
        package = _package_of(relative)
        for sql in _sql_texts(path):
            touched = [("writes", m) for pattern in _WRITES for m in pattern.findall(sql)]
            touched += [("reads", m) for m in _READS.findall(sql)]
            for kind, table in touched:
                owner = table_owners.get(table)
                if kind == "reads" and table in public:
                    continue
                if owner is not None and package != owner and not package.startswith(owner + "."):
                    found.add((relative, kind, table))
    return found


def _scanned_files() -> dict[str, Path]:
    files = {}
    for top in _SCANNED:
        for path in sorted((REPO / top).rglob("*")):
            relative = str(path.relative_to(REPO))
            if path.suffix in {".py", ".sql"} and not relative.startswith(_EXEMPT):
                files[relative.replace("gateway-sim/", "", 1)] = path
    return files


def test_every_table_has_one_owner() -> None:
    """Each table, view and aggregate the migrations create is named in an `-- owner:` line, once."""
    table_owners = owners()
    missing = _created() - set(table_owners)
    assert not missing, f"no `-- owner: <package>: <table>` line in a migration header for {sorted(missing)}"
    unknown = set(table_owners) - _created()
    assert not unknown, f"`-- owner:` lines name tables no migration creates: {sorted(unknown)}"


def test_the_database_comments_follow_the_register() -> None:
    """0013 writes each owner into the relation's comment, and a later migration that adds a table or
    moves one writes its comment too: the comments, applied in order, agree with the owner lines."""
    commented: dict[str, str] = {}
    for path in sorted(MIGRATIONS.glob("*.sql")):
        sql = path.read_text(encoding="utf-8")
        if path.name == "0013_table_owners.sql":
            commented |= dict(re.findall(r"\('([a-z_.]+)', '([a-z_.]+)'\)", sql))
        elif path.name > "0013":
            commented |= dict(re.findall(r"COMMENT ON (?:TABLE|VIEW) ([a-z_.]+) IS 'owner: ([a-z_.]+)'", sql))
    assert {t.removeprefix("audit."): o for t, o in commented.items()} == owners()


def test_only_the_owner_writes_a_table_and_others_read_through_its_read_module() -> None:
    found = crossings(_scanned_files(), owners(), published())
    assert not found, (
        "these files touch tables of another package (file, what, table): "
        f"{sorted(found)}; call the owner's functions to write, its read module to read "
        "(streams/archive/read.py, registry/read.py, runtime/audit.py), read a relation it publishes "
        "(registry: patient_directory), or use its Kafka topic"
    )


def test_the_checker_sees_a_foreign_write_and_read(tmp_path: Path) -> None:
    """Guard: planted SQL in the bridge that writes a registry table and reads the archive's, and a
    migration whose table has no owner, are found; the owner's own SQL and prose are not."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_a.sql").write_text(
        "-- owner: registry: kits\n-- owner: streams.archive: measurements\n"
        "CREATE TABLE kits (k text);\nCREATE TABLE measurements (m text);\nCREATE TABLE stray (s text);\n"
    )
    table_owners = owners(migrations)
    assert _created(migrations) - set(table_owners) == {"stray"}
    bridge = tmp_path / "bridge.py"
    bridge.write_text(
        '"""We never INSERT INTO kits here."""\n'
        'A = "UPDATE kits SET state = %s"\n'
        'B = f"SELECT {cols} FROM measurements m JOIN kits k USING (kit_id)"\n'
        'C = "copy it from the kits table"\n'
    )
    archive = tmp_path / "store.py"
    archive.write_text('A = "COPY measurements (m) FROM STDIN"\nB = "DELETE FROM measurements"\n')
    files = {"ingest/bridge.py": bridge, "streams/archive/store.py": archive}
    assert crossings(files, table_owners) == {
        ("ingest/bridge.py", "writes", "kits"),
        ("ingest/bridge.py", "reads", "measurements"),
        ("ingest/bridge.py", "reads", "kits"),
    }
    (migrations / "0002_b.sql").write_text("-- owner: alerts: kits\n")
    with pytest.raises(AssertionError, match="second owner"):
        owners(migrations)


def test_the_checker_follows_moved_owners_and_published_relations(tmp_path: Path) -> None:
    """Guard: a table handed to another owner is checked against the new owner (the old one's write
    is found); a published relation may be read by anyone and written by its owner only; a move from
    a package that does not own the table, and a package publishing what it does not own, fail."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_a.sql").write_text(
        "-- owner: alerts: audit_log\n-- owner: registry: patients\n"
        "CREATE TABLE audit_log (a text);\nCREATE TABLE patients (p text);\n"
    )
    (migrations / "0002_b.sql").write_text(
        "-- owner moved: audit_log: alerts -> runtime\n-- owner: registry: patient_directory\n"
        "-- published: registry: patient_directory\nCREATE VIEW patient_directory AS SELECT 1;\n"
    )
    table_owners = owners(migrations)
    assert table_owners == {"audit_log": "runtime", "patients": "registry", "patient_directory": "registry"}
    public = published(migrations, table_owners)
    assert public == {"patient_directory"}
    store = tmp_path / "store.py"
    store.write_text(
        'A = "INSERT INTO audit_log (a) VALUES (1)"\n'
        'B = "SELECT * FROM alerts a LEFT JOIN patient_directory p USING (patient_id)"\n'
        'C = "UPDATE patient_directory SET team_id = 1"\n'
        'D = "SELECT 1 FROM patients"\n'
    )
    kernel = tmp_path / "audit.py"
    kernel.write_text('A = "INSERT INTO audit.audit_log (a) VALUES (1)"\n')
    files = {"alerts/store.py": store, "runtime/audit.py": kernel}
    assert crossings(files, table_owners, public) == {
        ("alerts/store.py", "writes", "audit_log"),
        ("alerts/store.py", "writes", "patient_directory"),
        ("alerts/store.py", "reads", "patients"),
    }
    (migrations / "0003_c.sql").write_text("-- owner moved: patients: alerts -> runtime\n")
    with pytest.raises(AssertionError, match="moves patients from alerts"):
        owners(migrations)
    (migrations / "0003_c.sql").write_text("-- published: alerts: patients\n")
    with pytest.raises(AssertionError, match="publishes patients, not its own"):
        published(migrations)
