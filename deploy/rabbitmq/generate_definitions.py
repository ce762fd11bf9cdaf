#!/usr/bin/env python3
"""Writes deploy/rabbitmq/definitions.json: the broker's users, permissions and topology.

    python3 deploy/rabbitmq/generate_definitions.py           # rewrite the file
    python3 deploy/rabbitmq/generate_definitions.py --check   # exit 1 if the file is stale

The topology here mirrors messaging/src/topology.rs (names, queue arguments) and the
bindings each service declares (the event types its handler consumes);
scripts/validate-deploy.sh cross-checks the two. Pre-declaring it means no event is ever
unroutable because its consumer has not started yet: with per-service users, a service
can no longer declare its peers' queues (see docs/operations.md).

The passwords are for local development only (compose.yaml uses them). Their salts are
derived from the user name so that the file is reproducible; for any other environment
write a definitions file with random-salt hashes (rabbitmq_password.py) or manage the
users with rabbitmqctl, and keep the permissions below.
"""

import hashlib
import json
import os
import sys

# No __pycache__ next to the deployment files.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rabbitmq_password import hash_password

VHOST = "saga"
EVENTS = "saga.events"
RETRY = "saga.retry"
REDELIVER = "saga.redeliver"
DEAD_LETTER = "saga.dead-letter"
DELIVERY_LIMIT = 20
RETRY_DELAYS_SECS = [1, 4, 16, 64]

# service -> (routing keys it consumes, routing keys it publishes)
SERVICES = {
    "order-svc": (
        ["stock.reserved", "stock.rejected", "payment.done", "payment.failed",
         "stock.released", "payment.refunded"],
        ["order.created", "order.confirmed", "order.cancelled"],
    ),
    "inventory-svc": (
        ["order.created", "order.confirmed", "order.cancelled", "stock.adjusted"],
        ["stock.reserved", "stock.rejected", "stock.released"],
    ),
    "payment-svc": (
        ["stock.reserved", "order.cancelled", "funds.deposited"],
        ["payment.done", "payment.failed", "payment.refunded"],
    ),
}

# Local development passwords (documented in deploy/rabbitmq/README.md).
DEV_PASSWORDS = {
    "guest": "guest",
    "order-svc": "order-svc-dev",
    "inventory-svc": "inventory-svc-dev",
    "payment-svc": "payment-svc-dev",
    "sagactl": "sagactl-dev",
    "keda": "keda-dev",
}

EXCHANGES_RE = r"saga\.(events|retry|redeliver|dead-letter)"


def keys_regex(keys: list[str]) -> str:
    """An anchored alternation of exact routing keys, e.g. ^(order\\.created|...)$."""
    return "^(" + "|".join(k.replace(".", r"\.") for k in sorted(keys)) + ")$"


def service_permissions(svc: str) -> dict:
    """Least privilege for one service user; docs/operations.md explains every part."""
    own = svc.replace(".", r"\.")
    return {
        # exchange.declare of the four exchanges; queue.declare of its own queues.
        "configure": rf"^({EXCHANGES_RE}|{own}(\.dlq|\.retry\.[0-9]+s)?)$",
        # basic.publish to saga.events/retry/dead-letter; the DLX of a declared queue
        # (saga.dead-letter, saga.redeliver); queue.bind needs write on its own queues.
        "write": rf"^({EXCHANGES_RE}|{own}(\.dlq|\.retry\.[0-9]+s)?)$",
        # queue.bind needs read on the source exchange; basic.consume on its input queue;
        # a queue declared with a DLX needs read on itself (input and retry queues); the
        # service reads its own DLQ for the operator's triage (GET /dlq, redrive, purge).
        "read": rf"^({EXCHANGES_RE}|{own}(\.dlq|\.retry\.[0-9]+s)?)$",
    }


def dev_hash(user: str) -> str:
    salt = hashlib.sha256(f"order-saga-dev:{user}".encode()).digest()[:4]
    return hash_password(DEV_PASSWORDS[user], salt)


def user(name: str, tags: list[str]) -> dict:
    return {
        "name": name,
        "password_hash": dev_hash(name),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": tags,
        "limits": {},
    }


def queue(name: str, arguments: dict) -> dict:
    return {
        "name": name,
        "vhost": VHOST,
        "durable": True,
        "auto_delete": False,
        "arguments": {"x-queue-type": "quorum", **arguments},
    }


def dead_letter_args(exchange: str, key: str) -> dict:
    return {
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-routing-key": key,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def binding(source: str, destination: str, key: str) -> dict:
    return {
        "source": source,
        "vhost": VHOST,
        "destination": destination,
        "destination_type": "queue",
        "routing_key": key,
        "arguments": {},
    }


def definitions() -> dict:
    users = [
        # Local development only: the scripts, the tests and sagactl's defaults use it.
        user("guest", ["administrator"]),
        user("sagactl", ["management"]),
        user("keda", []),
    ] + [user(s, []) for s in SERVICES]

    permissions = [
        {"user": "guest", "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*"},
        {"user": "sagactl", "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*"},
        # KEDA's amqp mode reads queue depth with a passive queue.declare, which needs no
        # permission; the user only has to be allowed into the vhost.
        {"user": "keda", "vhost": VHOST, "configure": "^$", "write": "^$", "read": "^$"},
    ] + [{"user": s, "vhost": VHOST, **service_permissions(s)} for s in SERVICES]

    topic_permissions = [
        {"user": s, "vhost": VHOST, "exchange": EVENTS,
         "write": keys_regex(publishes), "read": keys_regex(consumes)}
        for s, (consumes, publishes) in SERVICES.items()
    ]

    exchanges = [
        {"name": name, "vhost": VHOST, "type": kind, "durable": True,
         "auto_delete": False, "internal": False, "arguments": {}}
        for name, kind in [(EVENTS, "topic"), (RETRY, "direct"),
                           (REDELIVER, "direct"), (DEAD_LETTER, "direct")]
    ]

    queues, bindings = [], []
    for svc, (consumes, _) in SERVICES.items():
        dlq = f"{svc}.dlq"
        queues.append(queue(dlq, {}))
        bindings.append(binding(DEAD_LETTER, dlq, dlq))
        queues.append(queue(svc, {**dead_letter_args(DEAD_LETTER, dlq),
                                  "x-delivery-limit": DELIVERY_LIMIT}))
        bindings += [binding(EVENTS, svc, key) for key in consumes]
        bindings.append(binding(REDELIVER, svc, svc))
        for secs in RETRY_DELAYS_SECS:
            name = f"{svc}.retry.{secs}s"
            queues.append(queue(name, {**dead_letter_args(REDELIVER, svc),
                                       "x-message-ttl": secs * 1000}))
            bindings.append(binding(RETRY, name, name))

    policies = [{
        # Spread the leaders of the saga's quorum queues over the nodes of a cluster
        # instead of putting each on the node its declaring client happened to use.
        "vhost": VHOST,
        "name": "saga-queues",
        "pattern": r"^(order|inventory|payment)-svc(\..+)?$",
        "apply-to": "queues",
        "priority": 0,
        "definition": {"queue-leader-locator": "balanced"},
    }]

    return {
        "users": users,
        "vhosts": [{"name": VHOST}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "parameters": [],
        "policies": policies,
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }


def render() -> str:
    return json.dumps(definitions(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "definitions.json")
    text = render()
    if argv[1:] == ["--check"]:
        with open(path, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{path} is stale: run python3 {argv[0]}", file=sys.stderr)
                return 1
        return 0
    if argv[1:]:
        sys.stderr.write(__doc__)
        return 2
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
