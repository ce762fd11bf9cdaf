#!/usr/bin/env python3
"""Consistency checks across the deployment files, run by scripts/validate-deploy.sh.

Schema validation (Compose, Kubernetes, KEDA, GitHub workflow) is done by the script
with kubernetes-validate and check-jsonschema. This file checks what no schema can:
that the files agree with each other and with the code.

    python3 deploy/tools/check_deploy.py [--no-yaml] [--verbose]

Needs PyYAML unless --no-yaml is given (then only the JSON files and the broker
definitions are checked). Prints a line per group of checks and one per failed check
(--verbose, or SAGA_VALIDATE_VERBOSE=1: one per check); exits 1 if any failed.
"""

import json
import os
import re
import sys
from urllib.parse import unquote, urlsplit

# No __pycache__ next to the deployment files.
sys.dont_write_bytecode = True
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "deploy", "rabbitmq"))

import generate_definitions as defs
from rabbitmq_password import check_password

SERVICES = {
    # name: (env prefix, port, database, database role)
    "order-svc": ("ORDER", 8080, "orders", "order_svc"),
    "inventory-svc": ("INVENTORY", 8081, "inventory", "inventory_svc"),
    "payment-svc": ("PAYMENT", 8082, "payments", "payment_svc"),
}

# Every metric the services export; the dashboard must show each one.
METRICS = [
    "saga_messages_handled_total",
    "saga_handler_duration_seconds",
    "saga_outbox_backlog",
    "saga_outbox_oldest_unsent_seconds",
    "saga_relay_published_total",
    "saga_inbox_rows",
    "saga_outcomes_total",
    "saga_duration_seconds",
    "saga_http_requests_total",
    "saga_http_request_duration_seconds",
]
HISTOGRAMS = {
    "saga_handler_duration_seconds",
    "saga_duration_seconds",
    "saga_http_request_duration_seconds",
}

failures: list[str] = []
VERBOSE = False
_section = {"title": None, "passed": 0}


def section(title: str | None) -> None:
    """Starts a group of checks; the previous group's passes are summed up in one line."""
    if _section["title"] is not None and not VERBOSE:
        print(f"  ok    {_section['passed']} checks passed")
    _section.update(title=title, passed=0)
    if title is not None:
        print(title)


def check(ok: bool, what: str, detail: str = "") -> bool:
    if ok:
        _section["passed"] += 1
        if VERBOSE:
            print(f"  ok    {what}")
    else:
        print(f"  FAIL  {what}{': ' + detail if detail else ''}")
        failures.append(what)
    return ok


def note(what: str) -> None:
    print(f"  note  {what}")


def path(*parts: str) -> str:
    return os.path.join(ROOT, *parts)


def read(*parts: str) -> str:
    with open(path(*parts), encoding="utf-8") as f:
        return f.read()


def load_json(rel: str):
    try:
        data = json.loads(read(rel))
    except (OSError, ValueError) as e:
        check(False, f"{rel} parses as JSON", str(e))
        return None
    check(True, f"{rel} parses as JSON")
    return data


def load_yaml_all(rel: str) -> list:
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(read(rel)) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        check(False, f"{rel} parses as YAML", str(e))
        return []
    return docs


def rabbit_match(regex: str, name: str) -> bool:
    """RabbitMQ matches permission regexes unanchored (re:run), like re.search."""
    return re.search(regex, name) is not None


# --------------------------------------------------------------- broker definitions


def service_consumes(svc: str) -> list | None:
    """The event types `<svc>/src` declares its handler consumes: the `events: [...]` of its
    `saga_inputs!` declaration, a `CONSUMES` list, or the types named in its `fn topology()`."""
    src = os.path.join(ROOT, svc, "src")
    try:
        texts = [read(svc, "src", name) for name in sorted(os.listdir(src)) if name.endswith(".rs")]
    except OSError:
        return None
    for text in texts:
        m = re.search(r"saga_inputs!\s*\{.*?events:\s*\[(.*?)\]", text, re.DOTALL)
        if m:
            return re.findall(r"\w+", m.group(1))
    for text in texts:
        m = re.search(r"CONSUMES[^=]*=\s*&\[(.*?)\];", text, re.DOTALL)
        if m:
            return re.findall(r"EventType::(\w+)", m.group(1))
    for text in texts:
        m = re.search(r"fn topology\(\)[^{]*\{(.*?)\n\}", text, re.DOTALL)
        if m:
            return re.findall(r"EventType::(\w+)", m.group(1))
    return None


def rust_topology():
    """What messaging/src, events/src and the services read as the topology, or None where
    it cannot be read."""
    try:
        topology = read("messaging", "src", "topology.rs")
        catalog = read("events", "src", "catalog", "mod.rs")
        retry = read("messaging", "src", "retry.rs")
    except OSError:
        return None
    out = {}
    m = re.search(r"DELIVERY_LIMIT:\s*i64\s*=\s*(\d+)", topology)
    out["delivery_limit"] = int(m.group(1)) if m else None
    m = re.search(r"RETRY_DELAYS[^=]*=\s*\[(.*?)\];", retry, re.DOTALL)
    out["retry"] = [int(s) for s in re.findall(r"from_secs\((\d+)\)", m.group(1))] if m else None
    exchanges = {}
    for const in ["EVENTS_EXCHANGE", "RETRY_EXCHANGE", "REDELIVER_EXCHANGE", "DEAD_LETTER_EXCHANGE"]:
        m = re.search(rf'{const}:\s*&str\s*=\s*"([^"]+)"', topology)
        exchanges[const] = m.group(1) if m else None
    out["exchanges"] = exchanges
    # The one declaration per event type: `Name { version: 1, routing_key: "...",
    # producer: "...", ... }` in the declare_catalog! invocation.
    declared = re.findall(
        r'(\w+)\s*\{\s*version:\s*\d+,\s*routing_key:\s*"([^"]+)",\s*producer:\s*"([^"]+)"',
        catalog,
    )
    keys = {name: key for name, key, _ in declared}
    out["keys"] = keys or None
    consumes = {}
    if keys:
        for svc in ["order-svc", "inventory-svc", "payment-svc"]:
            types = service_consumes(svc)
            if types is not None:
                consumes[svc] = sorted(keys.get(t, "?" + t) for t in types)
    out["consumes"] = consumes or None
    out["producers"] = {name: producer for name, _, producer in declared} or None
    return out


def check_definitions() -> dict | None:
    section("RabbitMQ definitions: hashes, least-privilege permissions, topology = messaging/src, events/src and the services")
    data = load_json("deploy/rabbitmq/definitions.json")
    if data is None:
        return None
    check(read("deploy/rabbitmq/definitions.json") == defs.render(),
          "definitions.json is what generate_definitions.py writes",
          "run: python3 deploy/rabbitmq/generate_definitions.py")

    users = {u["name"]: u for u in data.get("users", [])}
    for name, password in defs.DEV_PASSWORDS.items():
        u = users.get(name)
        check(u is not None and u.get("hashing_algorithm") == "rabbit_password_hashing_sha256"
              and check_password(u["password_hash"], password),
              f"user {name}: SHA-256 hash of its documented development password")
    check(users.get("sagactl", {}).get("tags") == ["management"], "user sagactl has the management tag")

    vhost = defs.VHOST
    perms = {p["user"]: p for p in data["permissions"] if p["vhost"] == vhost}
    topic = {p["user"]: p for p in data.get("topic_permissions", []) if p["vhost"] == vhost}
    for svc, (consumes, publishes) in defs.SERVICES.items():
        p = perms.get(svc)
        if not check(p is not None, f"{svc}: has permissions on vhost {vhost}"):
            continue
        exchanges = [defs.EVENTS, defs.RETRY, defs.REDELIVER, defs.DEAD_LETTER]
        own_retry = [f"{svc}.retry.{s}s" for s in defs.RETRY_DELAYS_SECS]
        own = [svc, f"{svc}.dlq"] + own_retry
        needs = {
            # exchange.declare; queue.declare of its own queues
            "configure": exchanges + own,
            # basic.publish; DLX of declared queues; queue.bind (write on the queue)
            "write": exchanges + own,
            # queue.bind (read on the exchange); basic.consume; DLX declare (read on the
            # queue); its own DLQ, which it reads for the operator's triage (GET /dlq)
            "read": exchanges + [svc, f"{svc}.dlq"] + own_retry,
        }
        peers = [q for other in defs.SERVICES if other != svc
                 for q in [other, f"{other}.dlq", f"{other}.retry.1s"]]
        forbidden = {
            "configure": peers + ["amq.topic", "other", f"{svc}x", f"{svc}.other"],
            "write": peers + ["amq.topic", "amq.default", f"{svc}.other"],
            "read": peers + ["amq.topic", f"{svc}.other"],
        }
        for kind in ("configure", "write", "read"):
            missing = [n for n in needs[kind] if not rabbit_match(p[kind], n)]
            extra = [n for n in forbidden[kind] if rabbit_match(p[kind], n)]
            check(not missing and not extra, f"{svc}: {kind} allows exactly what it needs",
                  f"misses {missing}, allows {extra}")
        t = topic.get(svc)
        if check(t is not None and t["exchange"] == defs.EVENTS, f"{svc}: topic permissions on {defs.EVENTS}"):
            all_keys = {k for c, pub in defs.SERVICES.values() for k in c + pub} | {"stock.adjusted", "funds.deposited"}
            check(sorted(k for k in all_keys if rabbit_match(t["write"], k)) == sorted(publishes),
                  f"{svc}: may publish exactly {', '.join(sorted(publishes))}")
            check(sorted(k for k in all_keys if rabbit_match(t["read"], k)) == sorted(consumes),
                  f"{svc}: may bind exactly the keys it consumes")

    keda = perms.get("keda")
    check(keda is not None and all(keda[k] == "^$" for k in ("configure", "write", "read")),
          "keda: may enter the vhost and nothing else (passive declares only)")

    # The topology against the code.
    rust = rust_topology()
    if rust is None:
        note("messaging/src or events/src not found: topology not compared with the code")
        return data
    if rust["delivery_limit"] is not None:
        check(rust["delivery_limit"] == defs.DELIVERY_LIMIT, "delivery limit matches messaging/src/topology.rs",
              f"code {rust['delivery_limit']}, definitions {defs.DELIVERY_LIMIT}")
    else:
        note("DELIVERY_LIMIT not found in messaging/src/topology.rs: not compared")
    if rust["retry"]:
        check(rust["retry"] == defs.RETRY_DELAYS_SECS, "retry delays match messaging/src/retry.rs",
              f"code {rust['retry']}, definitions {defs.RETRY_DELAYS_SECS}")
    else:
        note("RETRY_DELAYS not found in messaging/src/retry.rs: not compared")
    expected_ex = {"EVENTS_EXCHANGE": defs.EVENTS, "RETRY_EXCHANGE": defs.RETRY,
                   "REDELIVER_EXCHANGE": defs.REDELIVER, "DEAD_LETTER_EXCHANGE": defs.DEAD_LETTER}
    for const, name in expected_ex.items():
        if rust["exchanges"].get(const):
            check(rust["exchanges"][const] == name, f"{const} is {name} in the code")
    if rust["consumes"]:
        for svc, (consumes, _) in defs.SERVICES.items():
            check(rust["consumes"].get(svc) == sorted(consumes),
                  f"{svc}: bindings match the event types {svc}/src declares it consumes",
                  f"code {rust['consumes'].get(svc)}, definitions {sorted(consumes)}")
    else:
        note("the services' consumed event types are not readable: bindings not compared")
    if rust["producers"] and rust["keys"]:
        for svc, (_, publishes) in defs.SERVICES.items():
            code = sorted(rust["keys"][t] for t, p in rust["producers"].items() if p == svc and t in rust["keys"])
            check(code == sorted(publishes), f"{svc}: topic write permission covers the events it produces (catalog)",
                  f"code {code}, definitions {sorted(publishes)}")
    else:
        note("event producers not readable in events/src/catalog/mod.rs: topic permissions not compared")

    # The definitions' own topology is complete and consistent.
    queues = {q["name"]: q for q in data["queues"]}
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in data["bindings"]}
    for svc, (consumes, _) in defs.SERVICES.items():
        check(all(n in queues for n in [svc, f"{svc}.dlq"] + [f"{svc}.retry.{s}s" for s in defs.RETRY_DELAYS_SECS])
              and all(q["arguments"].get("x-queue-type") == "quorum" for n, q in queues.items() if n.startswith(svc)),
              f"{svc}: input, DLQ and retry queues are declared as quorum queues")
        check({(defs.EVENTS, svc, k) for k in consumes} | {(defs.REDELIVER, svc, svc)} <= bindings,
              f"{svc}: input queue bound to its keys and to {defs.REDELIVER}")
    return data


# ------------------------------------------------------------------------ Grafana


def check_grafana():
    section("Grafana dashboards: JSON, every saga metric shown, p50/p99 from histogram buckets")
    grafana_dir = path("deploy", "grafana")
    dashboards = sorted(f for f in os.listdir(grafana_dir) if f.endswith(".json"))
    check(bool(dashboards), "deploy/grafana has dashboards")
    for name in dashboards:
        d = load_json(f"deploy/grafana/{name}")
        if d is None:
            continue
        panels = []
        stack = list(d.get("panels", []))
        while stack:
            p = stack.pop(0)
            panels.append(p)
            stack.extend(p.get("panels", []))
        ids = [p.get("id") for p in panels]
        check(len(ids) == len(set(ids)) and None not in ids, f"{name}: panel ids are unique")
        exprs = [t.get("expr", "") for p in panels for t in p.get("targets", [])]
        check(all(exprs) and exprs, f"{name}: every query has an expression")
        text = "\n".join(exprs)
        for metric in METRICS:
            shown = (metric + "_bucket") in text if metric in HISTOGRAMS else re.search(rf"\b{metric}\b", text)
            check(bool(shown), f"{name}: shows {metric}" + (" (quantiles from _bucket)" if metric in HISTOGRAMS else ""))
        for metric in sorted(HISTOGRAMS):
            uses = [e for e in exprs if f"{metric}_bucket" in e]
            check(all("by (le" in e for e in uses)
                  and any("histogram_quantile(0.5," in e for e in uses)
                  and any("histogram_quantile(0.99," in e for e in uses),
                  f"{name}: p50 and p99 of {metric}, buckets summed by le")
        balanced = all(e.count("(") == e.count(")") and e.count("{") == e.count("}") and e.count("[") == e.count("]")
                       for e in exprs)
        check(balanced, f"{name}: brackets balance in every query")
    return dashboards


# ----------------------------------------------------------------------- compose


def url_parts(url: str):
    u = urlsplit(url)
    return unquote(u.username or ""), unquote(u.password or ""), u.hostname, u.port, u.path.lstrip("/")


def compose_seconds(value) -> float | None:
    """A number of seconds as compose.yaml gives it: `20`, `"${NAME:-20}"` (its default),
    or a duration such as `30s`, `1m` or `1m30s`."""
    text = str(value or "").strip()
    m = re.fullmatch(r"\$\{\w+:-([^}]*)\}", text)
    if m:
        text = m.group(1)
    try:
        return float(text)
    except ValueError:
        pass
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    if not text or not m:
        return None
    return int(m.group(1) or 0) * 60 + float(m.group(2) or 0)


def check_compose(definitions: dict | None):
    section("compose.yaml: broker users and database roles match definitions.json and 20-saga-roles.sql")
    docs = load_yaml_all("compose.yaml")
    if not docs:
        return
    compose = docs[0]
    services = compose.get("services", {})
    roles_sql = read("deploy/postgres/20-saga-roles.sql")
    roles = dict(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD '([^']*)'", roles_sql))
    users = {u["name"]: u for u in (definitions or {}).get("users", [])}
    for svc, (prefix, port, database, role) in SERVICES.items():
        s = services.get(svc)
        if not check(s is not None, f"compose: service {svc} exists"):
            continue
        env = s.get("environment", {})
        user, password, host, _, vhost = url_parts(env.get("SAGA_AMQP_URL", ""))
        check(user == svc and host == "rabbitmq" and vhost == defs.VHOST,
              f"{svc}: connects to rabbitmq/{defs.VHOST} as broker user {svc}", f"got {user}@{host}/{vhost}")
        if user in users:
            check(check_password(users[user]["password_hash"], password),
                  f"{svc}: its broker password matches the hash in definitions.json")
        user, password, host, _, db = url_parts(env.get(f"SAGA_{prefix}_DATABASE_URL", ""))
        check(user == role and host == "postgres" and db == database,
              f"{svc}: connects to postgres/{database} as role {role}", f"got {user}@{host}/{db}")
        check(roles.get(role) == password, f"{svc}: its database password is the one 20-saga-roles.sql sets")
        check(re.search(rf"ALTER DATABASE {database} OWNER TO {role};", roles_sql) is not None,
              f"{svc}: role {role} owns database {database}")
        check(env.get(f"SAGA_{prefix}_HTTP_ADDR") == f"0.0.0.0:{port}", f"{svc}: listens on 0.0.0.0:{port}")
        test = " ".join(s.get("healthcheck", {}).get("test", []))
        check(f"127.0.0.1:{port}/healthz" in test, f"{svc}: healthcheck probes /healthz on {port}")
        check(f"127.0.0.1:{port}:{port}" in s.get("ports", []), f"{svc}: port {port} published on 127.0.0.1 only")
        check(s.get("restart") in ("unless-stopped", "always", "on-failure"), f"{svc}: has a restart policy")
        grace, stop = compose_seconds(env.get("SAGA_SHUTDOWN_GRACE_SECS")), compose_seconds(s.get("stop_grace_period"))
        check(grace is not None and stop is not None and grace < stop,
              f"{svc}: stop_grace_period is longer than its drain (SAGA_SHUTDOWN_GRACE_SECS), so SIGKILL never cuts it",
              f"drain {grace} s, stop_grace_period {stop} s")
    for name, s in services.items():
        for v in s.get("volumes", []):
            src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
            # .stack/ is made at run time (the development key pair, by the dev-keys service).
            if src.startswith("./") and not src.startswith("./.stack"):
                check(os.path.exists(path(src[2:])), f"compose: {name} mounts {src}, which exists")
        for p in s.get("ports", []):
            check(str(p).startswith("127.0.0.1:"), f"compose: {name} publishes {p} on loopback only")
    for name in ("prometheus", "grafana"):
        check("observability" in services.get(name, {}).get("profiles", []),
              f"compose: {name} is in the observability profile")

    section("Prometheus: scrapes every service and the broker")
    prom = load_yaml_all("deploy/prometheus/prometheus.yml")
    if prom:
        targets = {}
        for job in prom[0].get("scrape_configs", []):
            for sc in job.get("static_configs", []):
                for t in sc.get("targets", []):
                    targets[t] = sc.get("labels", {}).get("service")
        for svc, (_, port, _, _) in SERVICES.items():
            check(targets.get(f"{svc}:{port}") == svc, f"prometheus scrapes {svc}:{port} with service={svc}")
        check("rabbitmq:15692" in targets, "prometheus scrapes the broker's per-queue metrics")

    section("Grafana provisioning: datasource and dashboard provider")
    ds = load_yaml_all("deploy/grafana/provisioning/datasources/prometheus.yaml")
    uids = [d.get("uid") for doc in ds for d in doc.get("datasources", [])]
    dash = json.loads(read("deploy/grafana/saga-dashboard.json"))
    current = next((v.get("current", {}).get("value") for v in dash["templating"]["list"]
                    if v.get("type") == "datasource"), None)
    check(current in uids, "the dashboard's default datasource is the provisioned one", f"{current} not in {uids}")
    prov = load_yaml_all("deploy/grafana/provisioning/dashboards/saga.yaml")
    paths = [p.get("options", {}).get("path") for doc in prov for p in doc.get("providers", [])]
    mounts = " ".join(str(v) for v in services.get("grafana", {}).get("volumes", []))
    check(all(p and p in mounts for p in paths), "the dashboard provider's path is mounted into Grafana")


# -------------------------------------------------------------------- Kubernetes


def check_k8s():
    section("Kubernetes: kustomization, Deployments, Services, Secrets, KEDA refer to each other correctly")
    base = path("deploy", "k8s")
    kust = load_yaml_all("deploy/k8s/kustomization.yaml")
    if not kust:
        return
    resources = kust[0].get("resources", [])
    # rabbitmq/ and postgres/ are kustomizations of their own (the broker and the database,
    # each in its own namespace).
    on_disk = sorted(os.path.relpath(os.path.join(d, f), base)
                     for d, _, fs in os.walk(base) for f in fs
                     if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"
                     and os.path.relpath(d, base).split(os.sep)[0] not in ("rabbitmq", "postgres"))
    check(sorted(resources) == on_disk, "kustomization.yaml lists every manifest, and only existing ones",
          f"listed {sorted(resources)}, on disk {on_disk}")
    objects = []
    for rel in resources:
        for doc in load_yaml_all(f"deploy/k8s/{rel}"):
            objects.append((rel, doc))
    by_kind: dict = {}
    for _rel, o in objects:
        by_kind.setdefault(o.get("kind"), {})[o.get("metadata", {}).get("name")] = o
    secrets = {n: set((o.get("stringData") or {}) | (o.get("data") or {})) for n, o in by_kind.get("Secret", {}).items()}
    configmaps = {n: set(o.get("data", {})) for n, o in by_kind.get("ConfigMap", {}).items()}
    deployments = by_kind.get("Deployment", {})
    dockerfile = read("Dockerfile")
    m = re.search(r"^USER\s+(\d+)", dockerfile, re.MULTILINE)
    image_uid = int(m.group(1)) if m else None

    seen_auth: set = set()
    for svc, (prefix, port, _, _) in SERVICES.items():
        d = deployments.get(svc)
        if not check(d is not None, f"{svc}: Deployment exists"):
            continue
        spec = d["spec"]
        pod = spec["template"]["spec"]
        c = pod["containers"][0]
        check("replicas" not in spec, f"{svc}: replicas left to KEDA")
        check(c.get("command") == [svc], f"{svc}: runs {svc}")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        check(env.get(f"SAGA_{prefix}_HTTP_ADDR") == f"0.0.0.0:{port}", f"{svc}: listens on 0.0.0.0:{port}")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        check(ports.get("http") == port, f"{svc}: containerPort http is {port}")
        ann = spec["template"]["metadata"].get("annotations", {})
        check(ann.get("prometheus.io/port") == str(port) and ann.get("prometheus.io/path") == "/metrics",
              f"{svc}: scrape annotations point at :{port}/metrics")
        # Liveness checks no dependency (an outage must not restart pods); readiness checks
        # the database.
        for probe, want in (("startupProbe", "/healthz/live"), ("readinessProbe", "/healthz/ready"),
                            ("livenessProbe", "/healthz/live")):
            p = c.get(probe, {}).get("httpGet", {})
            check(p.get("path") == want and p.get("port") in ("http", port), f"{svc}: {probe} on {want}")
        refs = c.get("envFrom", [])
        secret_refs = [r["secretRef"]["name"] for r in refs if "secretRef" in r]
        cm_refs = [r["configMapRef"]["name"] for r in refs if "configMapRef" in r]
        check(all(r in configmaps for r in cm_refs) and cm_refs, f"{svc}: its ConfigMap exists")
        settings = {}
        for r in cm_refs:
            settings |= by_kind.get("ConfigMap", {}).get(r, {}).get("data", {})
        check_drain(svc, spec, pod, c, settings)
        provided = set().union(*(secrets.get(r, set()) for r in secret_refs)) if secret_refs else set()
        check(all(r in secrets for r in secret_refs)
              and {"SAGA_AMQP_URL", f"SAGA_{prefix}_DATABASE_URL"} <= provided,
              f"{svc}: its Secret provides SAGA_AMQP_URL and SAGA_{prefix}_DATABASE_URL")
        sc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
        check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == image_uid
              and csc.get("allowPrivilegeEscalation") is False and csc.get("readOnlyRootFilesystem") is True
              and csc.get("capabilities", {}).get("drop") == ["ALL"],
              f"{svc}: non-root (uid {image_uid}, as in the Dockerfile), read-only, no capabilities")
        res = c.get("resources", {})
        check("requests" in res and "memory" in res.get("limits", {}), f"{svc}: resource requests and a memory limit")
        svc_obj = by_kind.get("Service", {}).get(svc)
        check(svc_obj is not None and svc_obj["spec"]["selector"] == spec["selector"]["matchLabels"]
              and svc_obj["spec"]["ports"][0]["port"] == port,
              f"{svc}: Service selects its pods on port {port}")
        so = by_kind.get("ScaledObject", {}).get(svc)
        if check(so is not None, f"{svc}: ScaledObject exists"):
            check(so["spec"]["scaleTargetRef"]["name"] == svc, f"{svc}: ScaledObject targets its Deployment")
            trig = so["spec"]["triggers"][0]
            check(trig["type"] == "rabbitmq" and trig["metadata"].get("queueName") == svc,
                  f"{svc}: scales on the depth of queue {svc}")
            auth = trig.get("authenticationRef", {}).get("name")
            ta = by_kind.get("TriggerAuthentication", {}).get(auth)
            if check(ta is not None, f"{svc}: its TriggerAuthentication {auth} exists") and auth not in seen_auth:
                seen_auth.add(auth)
                for ref in ta["spec"].get("secretTargetRef", []):
                    check(ref["key"] in secrets.get(ref["name"], set()),
                          f"{auth}: Secret {ref['name']} has key {ref['key']}")
    check_network_policies(by_kind.get("NetworkPolicy", {}))
    check_service_availability(deployments, by_kind.get("ScaledObject", {}),
                               by_kind.get("PodDisruptionBudget", {}))
    for name, o in by_kind.get("Secret", {}).items():
        values = list((o.get("stringData") or {}).values())
        check(all("CHANGE-ME" in v for v in values if "://" in v),
              f"Secret {name}: holds placeholders only (no real credentials in the repository)")


def check_drain(svc: str, spec: dict, pod: dict, container: dict, settings: dict):
    """A rollout or an eviction drains a pod (docs/operations.md, "Rolling restarts and
    shutdown"): the new pod first, the process's drain within Kubernetes' grace period, and
    the readiness probe noticing the drain while the listener still accepts."""
    rolling = spec.get("strategy", {})
    update = rolling.get("rollingUpdate", {})
    check(rolling.get("type") == "RollingUpdate" and update.get("maxUnavailable") == 0
          and isinstance(update.get("maxSurge"), int) and update["maxSurge"] >= 1,
          f"{svc}: a rollout starts a new pod before it stops one (RollingUpdate, maxUnavailable: 0, maxSurge >= 1)",
          str(rolling))
    grace = compose_seconds(settings.get("SAGA_SHUTDOWN_GRACE_SECS"))
    delay = compose_seconds(settings.get("SAGA_SHUTDOWN_DELAY_SECS", "0"))
    period = pod.get("terminationGracePeriodSeconds", 30)
    check(grace is not None and grace < period and "preStop" not in container.get("lifecycle", {}),
          f"{svc}: its drain (SAGA_SHUTDOWN_GRACE_SECS) ends before terminationGracePeriodSeconds, "
          "with no preStop hook delaying SIGTERM",
          f"drain {grace} s, terminationGracePeriodSeconds {period}")
    probe = container.get("readinessProbe", {})
    noticed = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    check(delay is not None and grace is not None and noticed <= delay <= grace / 2,
          f"{svc}: the listener keeps accepting (SAGA_SHUTDOWN_DELAY_SECS) until the readiness probe has "
          "noticed the drain, within half the drain",
          f"delay {delay} s, probe notices within {noticed} s")


HOSTNAME = "kubernetes.io/hostname"


def selects(selector: dict | None, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects pods with these
    labels. An empty or missing selector counts as selecting nothing here: every selector
    of the layout names its pods."""
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if not ((op == "In" and labels.get(key) in values)
                or (op == "NotIn" and labels.get(key) not in values)
                or (op == "Exists" and key in labels)
                or (op == "DoesNotExist" and key not in labels)):
            return False
    return True


def spread_over_nodes(pod: dict, labels: dict) -> bool:
    """Whether a pod template spreads its replicas over Kubernetes nodes: a topology spread
    constraint or a pod anti-affinity term (required or preferred) by hostname that
    selects the pods themselves."""
    for t in pod.get("topologySpreadConstraints") or []:
        if t.get("topologyKey") == HOSTNAME and selects(t.get("labelSelector"), labels):
            return True
    anti = (pod.get("affinity") or {}).get("podAntiAffinity") or {}
    terms = list(anti.get("requiredDuringSchedulingIgnoredDuringExecution") or [])
    terms += [w.get("podAffinityTerm") or {} for w in anti.get("preferredDuringSchedulingIgnoredDuringExecution") or []]
    return any(t.get("topologyKey") == HOSTNAME and selects(t.get("labelSelector"), labels) for t in terms)


def replica_floor(deployment: dict, scaled_object: dict | None) -> int:
    """The fewest pods a Deployment runs: when KEDA owns the count, its ScaledObject's
    minReplicaCount (KEDA's default 0), or its idleReplicaCount when that is lower
    (scaled there while the queue is empty); else the Deployment's replicas (default 1)."""
    if scaled_object is None:
        return deployment["spec"].get("replicas", 1)
    so = scaled_object.get("spec", {})
    floor = so.get("minReplicaCount", 0)
    if "idleReplicaCount" in so:
        floor = min(floor, so["idleReplicaCount"])
    return floor


def check_service_availability(deployments: dict, scaled_objects: dict, pdbs: dict):
    """The production layout's promises for the services: at least two replicas of each,
    spread over the nodes, and a disruption budget that keeps at least one through
    voluntary disruptions without blocking them."""
    for svc in SERVICES:
        d = deployments.get(svc)
        if d is None:
            continue
        template = d["spec"]["template"]
        labels = template.get("metadata", {}).get("labels", {})
        floor = replica_floor(d, scaled_objects.get(svc))
        check(floor >= 2, f"{svc}: at least two replicas (the ScaledObject's minReplicaCount, or replicas)",
              f"at least {floor}")
        check(spread_over_nodes(template["spec"], labels),
              f"{svc}: replicas spread over nodes (topologySpreadConstraints or podAntiAffinity by {HOSTNAME})")
        mine = {n: p.get("spec", {}) for n, p in pdbs.items() if selects(p.get("spec", {}).get("selector"), labels)}
        budgets = []
        for spec in mine.values():
            # Integers only: a percentage's meaning changes with the count KEDA sets.
            if isinstance(spec.get("minAvailable"), int):
                # minAvailable >= the floor would forbid every eviction at the floor.
                budgets.append(1 <= spec["minAvailable"] < max(floor, 2))
            elif isinstance(spec.get("maxUnavailable"), int):
                # 0 would forbid every eviction: drains would hang on the service.
                budgets.append(spec["maxUnavailable"] == 1)
            else:
                budgets.append(False)
        check(len(mine) == 1 and all(budgets),
              f"{svc}: one PodDisruptionBudget selects its pods, keeping one up without blocking drains "
              "(minAvailable >= 1 below the replica floor, or maxUnavailable: 1)",
              str({n: {k: v for k, v in s.items() if k != "selector"} for n, s in mine.items()}))


def check_network_policies(policies: dict):
    """Only order-svc's HTTP is reachable from outside the namespace; the others' from the
    namespace and the monitoring namespace; everything else is denied."""
    deny = policies.get("default-deny", {}).get("spec", {})
    check(deny.get("podSelector") == {} and set(deny.get("policyTypes", [])) == {"Ingress", "Egress"}
          and not deny.get("ingress") and not deny.get("egress"),
          "NetworkPolicy default-deny denies all ingress and egress")
    for svc, (_prefix, port, _, _) in SERVICES.items():
        mine = [p["spec"] for p in policies.values()
                if p["spec"].get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == svc]
        rules = [r for spec in mine for r in spec.get("ingress", [])]
        ports = {p.get("port") for r in rules for p in r.get("ports", [])}
        check(ports == {port}, f"{svc}: ingress allowed on its HTTP port {port} only", f"ports {ports}")
        from_anywhere = any("from" not in r for r in rules)
        if svc == "order-svc":
            check(from_anywhere, f"{svc}: its HTTP API is reachable from outside the namespace")
        else:
            sources = [f for r in rules for f in r.get("from", [])]
            in_namespace = {"podSelector": {}} in sources
            monitoring = any(f.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                             == "monitoring" and "podSelector" not in f for f in sources)
            others = [f for f in sources if f != {"podSelector": {}} and "namespaceSelector" not in f]
            check(not from_anywhere and in_namespace and monitoring and not others,
                  f"{svc}: reachable only from the namespace and the monitoring namespace")
    egress = [r for p in policies.values() for r in p["spec"].get("egress", [])]
    egress_ports = {(p.get("protocol"), p.get("port")) for r in egress for p in r.get("ports", [])}
    check({("UDP", 53), ("TCP", 5432), ("TCP", 5672)} <= egress_ports,
          "egress allows DNS, PostgreSQL and RabbitMQ", f"{sorted(egress_ports, key=str)}")


def main(argv: list[str]) -> int:
    global VERBOSE
    VERBOSE = "--verbose" in argv or os.environ.get("SAGA_VALIDATE_VERBOSE") == "1"
    os.chdir(ROOT)
    definitions = check_definitions()
    check_grafana()
    if "--no-yaml" not in argv:
        check_compose(definitions)
        check_k8s()
        from check_broker_cluster import check_broker_cluster
        check_broker_cluster(section, check, load_yaml_all, defs)
        from check_database_cluster import check_database_cluster
        check_database_cluster(section, check, load_yaml_all, SERVICES)
    section(None)
    if failures:
        print(f"{len(failures)} consistency check(s) FAILED: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
