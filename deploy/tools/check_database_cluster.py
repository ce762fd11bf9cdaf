"""Consistency checks of deploy/k8s/postgres (the CloudNativePG cluster), run by check_deploy.py.

What no schema can tell: that the cluster keeps a synchronous standby on another machine,
that its bootstrap creates the three databases with the owners and the revoked PUBLIC
rights of deploy/postgres/20-saga-roles.sql, that each role gets its password from a
Secret that exists, that the services' database URLs reach the primary through the
cluster's -rw Service with their own role and database, and that the services' pools at
their KEDA maxima fit the server's max_connections. It holds for one Cluster holding the
three databases (the reference layout) as for one Cluster per service.
"""

import os
import re
from urllib.parse import urlsplit

from kustomization import objects_by_kind

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BASE = os.path.join("deploy", "k8s", "postgres")
CNPG_API = "postgresql.cnpg.io/v1"
HOSTNAME = "kubernetes.io/hostname"
PLACEHOLDER = "CHANGE-ME"
# PostgreSQL's default superuser_reserved_connections: slots the services cannot use.
RESERVED_CONNECTIONS = 3

CREATE_ROLE = re.compile(r"CREATE\s+ROLE\s+(\w+)\b.*\bLOGIN\b", re.IGNORECASE)
CREATE_DATABASE = re.compile(r"CREATE\s+DATABASE\s+(\w+)(?:\s+(?:WITH\s+)?OWNER\s*=?\s*(\w+))?", re.IGNORECASE)
ALTER_OWNER = re.compile(r"ALTER\s+DATABASE\s+(\w+)\s+OWNER\s+TO\s+(\w+)", re.IGNORECASE)
REVOKE_PUBLIC = re.compile(r"REVOKE\s+CONNECT\s*,\s*TEMPORARY\s+ON\s+DATABASE\s+(\w+)\s+FROM\s+PUBLIC", re.IGNORECASE)
NAMES_DATABASE = re.compile(r"\bDATABASE\s+(\w+)", re.IGNORECASE)


def _statements(text: str) -> list[str]:
    """SQL statements, one a line or separated by semicolons, without `--` comments."""
    lines = (line.split("--", 1)[0] for line in text.splitlines())
    return [s.strip() for line in lines for s in line.split(";") if s.strip()]


def _sql_layout(text: str) -> tuple[set, dict, set]:
    """The login roles, the owner of each database and the databases revoked from PUBLIC
    that SQL statements set up."""
    roles, owners, revoked = set(), {}, set()
    for stmt in _statements(text):
        if m := CREATE_ROLE.match(stmt):
            roles.add(m.group(1))
        elif (m := CREATE_DATABASE.match(stmt)) and m.group(2):
            owners[m.group(1)] = m.group(2)
        elif m := ALTER_OWNER.match(stmt):
            owners[m.group(1)] = m.group(2)
        elif m := REVOKE_PUBLIC.match(stmt):
            revoked.add(m.group(1))
    return roles, owners, revoked


def _synchronous(spec: dict) -> tuple[bool, str]:
    """Whether a commit waits for at least one standby, and a standby is there to give it:
    spec.postgresql.synchronous (number >= 1, durability not `preferred`, which drops to
    asynchronous when the standbys are gone) or minSyncReplicas/maxSyncReplicas."""
    instances = spec.get("instances", 1)
    sync = (spec.get("postgresql") or {}).get("synchronous")
    if sync is not None:
        number = sync.get("number", 0)
        durability = sync.get("dataDurability", "required")
        ok = isinstance(number, int) and 1 <= number <= instances - 1 and durability == "required"
        return ok, f"synchronous: {sync}, instances: {instances}"
    lo, hi = spec.get("minSyncReplicas", 0), spec.get("maxSyncReplicas", 0)
    ok = isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi < instances
    return ok, f"minSyncReplicas: {lo}, maxSyncReplicas: {hi}, instances: {instances}"


def check_database_cluster(section, check, load_yaml_all, services: dict) -> None:
    section("Kubernetes: the database cluster (deploy/k8s/postgres, CloudNativePG) keeps a synchronous standby and serves the saga")
    found = objects_by_kind(ROOT, BASE, check, load_yaml_all)
    if found is None:
        return
    namespace, by_kind = found
    secrets = by_kind.get("Secret", {})
    clusters = {n: c for n, c in by_kind.get("Cluster", {}).items() if c.get("apiVersion") == CNPG_API}
    if not check(bool(clusters), f"a CloudNativePG Cluster ({CNPG_API}) exists"):
        return

    def password_secret(name: str | None, role: str, what: str) -> None:
        s = secrets.get(name) or {}
        data = s.get("stringData") or {}
        check(s.get("type") == "kubernetes.io/basic-auth" and data.get("username") == role
              and data.get("password") == PLACEHOLDER,
              f"{what}: Secret {name} exists (basic-auth, username {role}, a placeholder password only)")

    databases: dict = {}  # database -> (cluster, owner, revoked from PUBLIC)
    for name, c in clusters.items():
        spec = c.get("spec", {})
        instances = spec.get("instances", 1)
        check(isinstance(instances, int) and instances >= 2,
              f"Cluster {name}: at least two instances (a primary and a standby)", f"instances: {instances}")
        ok, detail = _synchronous(spec)
        check(ok, f"Cluster {name}: synchronous replication, a commit waits for at least one standby", detail)
        aff = spec.get("affinity") or {}
        check(aff.get("enablePodAntiAffinity", True) is not False
              and aff.get("topologyKey", HOSTNAME) == HOSTNAME
              and aff.get("podAntiAffinityType") == "required",
              f"Cluster {name}: one instance per Kubernetes node (required pod anti-affinity by {HOSTNAME})",
              str(aff))
        check(spec.get("enablePDB", True) is not False,
              f"Cluster {name}: CloudNativePG's PodDisruptionBudgets are on (a drain takes one instance at a time)")

        initdb = (spec.get("bootstrap") or {}).get("initdb")
        if not check(initdb is not None, f"Cluster {name}: bootstrapped by initdb (creates the databases)"):
            continue
        app_db, app_owner = initdb.get("database", "app"), initdb.get("owner", initdb.get("database", "app"))
        post = "\n".join(initdb.get("postInitSQL") or [])
        post_app = "\n".join(initdb.get("postInitApplicationSQL") or [])
        # initdb creates its database after postInitSQL ran (and before postInitApplicationSQL).
        check(app_db not in NAMES_DATABASE.findall(post),
              f"Cluster {name}: postInitSQL does not name database {app_db}, which exists only after it")
        roles, owners, revoked = _sql_layout(post)
        _, app_owners, app_revoked = _sql_layout(post_app)
        owners = {app_db: app_owner, **owners, **{d: o for d, o in app_owners.items() if d == app_db}}
        revoked |= app_revoked
        for db, owner in owners.items():
            if db in databases:
                check(False, f"database {db} is created by one Cluster only",
                      f"{databases[db][0]} and {name}")
            databases[db] = (name, owner, db in revoked)
        managed = {r.get("name"): r for r in (spec.get("managed") or {}).get("roles") or []}
        for role in sorted(roles | {app_owner}):
            r = managed.get(role)
            if r is not None:
                check(r.get("ensure", "present") == "present" and r.get("login") is True
                      and not any(r.get(k) for k in ("superuser", "createdb", "createrole", "replication", "bypassrls")),
                      f"Cluster {name}: role {role} logs in, with no other right (managed.roles)")
                password_secret((r.get("passwordSecret") or {}).get("name"), role,
                                f"Cluster {name}: role {role}'s password")
            elif role == app_owner and initdb.get("secret"):
                password_secret(initdb["secret"].get("name"), role, f"Cluster {name}: role {role}'s password")
            else:
                check(False, f"Cluster {name}: role {role} gets its password from a Secret "
                      "(managed.roles passwordSecret, or initdb.secret for the owner)")

    # The same layout as compose's 20-saga-roles.sql: the owners and the revoked rights.
    try:
        with open(os.path.join(ROOT, "deploy", "postgres", "20-saga-roles.sql"), encoding="utf-8") as f:
            sql_roles, sql_owners, sql_revoked = _sql_layout(f.read())
    except OSError:
        sql_roles, sql_owners, sql_revoked = set(), {}, set()
    created = {db: owner for db, (_, owner, _) in databases.items() if db in sql_owners}
    check(created == sql_owners and set(sql_owners.values()) <= sql_roles,
          "the Clusters create the databases and owners of deploy/postgres/20-saga-roles.sql",
          f"Clusters {created}, 20-saga-roles.sql {sql_owners}")
    check({db for db, (_, _, r) in databases.items() if r} >= sql_revoked,
          "CONNECT and TEMPORARY are revoked from PUBLIC on every service database, as in 20-saga-roles.sql",
          f"revoked {sorted(db for db, (_, _, r) in databases.items() if r)}, want {sorted(sql_revoked)}")

    # The services reach their database on the primary, through the cluster's -rw Service.
    urls = {}
    for doc in load_yaml_all("deploy/k8s/secrets.yaml"):
        for key, url in (doc.get("stringData") or {}).items():
            if key.endswith("_DATABASE_URL"):
                urls[key] = url
    for svc, (prefix, _port, db, role) in services.items():
        key = f"SAGA_{prefix}_DATABASE_URL"
        url = urls.get(key, "")
        cluster, owner, _ = databases.get(db, (None, None, False))
        check(cluster is not None and owner == role,
              f"{svc}: its database {db} is created by a Cluster, owned by {role}", f"{databases.get(db)}")
        u = urlsplit(url)
        hosts = {f"{cluster}-rw.{namespace}.svc", f"{cluster}-rw.{namespace}.svc.cluster.local"}
        check("," not in url and u.hostname in hosts and (u.port or 5432) == 5432
              and u.username == role and u.path == f"/{db}" and u.password == PLACEHOLDER,
              f"{svc}: {key} reaches {db} as {role} on the primary, through the -rw Service of Cluster {cluster}",
              url)

    # Every service's pool at its KEDA maximum fits the server (deploy/k8s/configmap.yaml).
    pool = None
    for doc in load_yaml_all("deploy/k8s/configmap.yaml"):
        pool = (doc.get("data") or {}).get("SAGA_DB_POOL_SIZE", pool)
    maxima = {}
    for svc in services:
        for doc in load_yaml_all(f"deploy/k8s/keda/scaledobject-{svc}.yaml"):
            maxima[svc] = (doc.get("spec") or {}).get("maxReplicaCount")
    for name, c in clusters.items():
        mine = [svc for svc, (_, _, db, _) in services.items() if databases.get(db, (None,))[0] == name]
        if not mine or pool is None or any(maxima.get(s) is None for s in mine):
            check(False, f"Cluster {name}: the services' connections can be counted (SAGA_DB_POOL_SIZE, maxReplicaCount)")
            continue
        # One connection more per order-svc replica: its backlog counter (configmap.yaml).
        wanted = sum(maxima[s] * (int(pool) + (1 if s == "order-svc" else 0)) for s in mine)
        params = ((c.get("spec") or {}).get("postgresql") or {}).get("parameters") or {}
        limit = int(params.get("max_connections", "100")) - RESERVED_CONNECTIONS
        check(wanted <= limit,
              f"Cluster {name}: max_connections holds the services' pools at their KEDA maxima",
              f"{wanted} wanted, {limit} available")
