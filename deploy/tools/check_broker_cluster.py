"""Consistency checks of deploy/k8s/rabbitmq (the three-node broker), run by check_deploy.py.

What no schema can tell: that the nodes can find each other (node names, headless Service,
peer discovery settings agree), that every quorum queue is grown to as many members as
there are nodes, that the definitions the nodes import are mounted where rabbitmq.conf
reads them, and that the services' Secrets point at the broker's Service.
"""

import json
import os
import re
from urllib.parse import urlsplit

from kustomization import objects_by_kind

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BASE = os.path.join("deploy", "k8s", "rabbitmq")


def _conf(text: str) -> dict:
    """rabbitmq.conf (sysctl format) as a dict; comments and blank lines ignored."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def check_broker_cluster(section, check, load_yaml_all, defs) -> None:
    section("Kubernetes: the broker cluster (deploy/k8s/rabbitmq) forms, replicates and serves the saga")
    found = objects_by_kind(ROOT, BASE, check, load_yaml_all)
    if found is None:
        return
    namespace, by_kind = found

    sts = by_kind.get("StatefulSet", {}).get("rabbitmq")
    if not check(sts is not None, "StatefulSet rabbitmq exists"):
        return
    spec = sts["spec"]
    replicas = spec.get("replicas")
    check(replicas == 3, "three broker nodes", f"replicas: {replicas}")
    headless = by_kind.get("Service", {}).get(spec.get("serviceName"), {})
    check(headless.get("spec", {}).get("clusterIP") == "None"
          and headless["spec"].get("publishNotReadyAddresses") is True,
          "the StatefulSet's serviceName is a headless Service that lists pods before they are ready")
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    suffix = f".{spec.get('serviceName')}.{namespace}.svc.cluster.local"
    nodename = env.get("RABBITMQ_NODENAME", {}).get("value", "")
    check(nodename == f"rabbit@$(MY_POD_NAME){suffix}" and env.get("RABBITMQ_USE_LONGNAME", {}).get("value") == "true",
          "node names are the pods' DNS names under the headless Service", nodename)
    check("secretKeyRef" in env.get("RABBITMQ_ERLANG_COOKIE", {}).get("valueFrom", {}),
          "the nodes share an Erlang cookie from a Secret")

    cm = by_kind.get("ConfigMap", {}).get("rabbitmq-config", {}).get("data", {})
    conf = _conf(cm.get("rabbitmq.conf", ""))
    check(conf.get("cluster_formation.peer_discovery_backend") == "rabbit_peer_discovery_k8s"
          and "rabbitmq_peer_discovery_k8s" in cm.get("enabled_plugins", ""),
          "peer discovery through the Kubernetes API, plugin enabled")
    check(conf.get("cluster_formation.k8s.service_name") == spec.get("serviceName")
          and conf.get("cluster_formation.k8s.hostname_suffix") == suffix
          and conf.get("cluster_formation.k8s.address_type") == "hostname",
          "peer discovery looks for the node names the pods have")
    check(conf.get("quorum_queue.continuous_membership_reconciliation.enabled") == "true"
          and conf.get("quorum_queue.continuous_membership_reconciliation.target_group_size") == str(replicas),
          "every quorum queue is grown to a member on each node")
    check(conf.get("cluster_partition_handling") == "pause_minority",
          "a node cut off from the majority pauses")
    try:
        with open(os.path.join(ROOT, "deploy", "rabbitmq", "rabbitmq.conf"), encoding="utf-8") as f:
            compose_conf = _conf(f.read())
    except OSError:
        compose_conf = {}
    check(compose_conf.get("cluster_partition_handling") == "pause_minority",
          "deploy/rabbitmq/rabbitmq.conf handles partitions the same way (pause_minority)")
    labels = spec["template"].get("metadata", {}).get("labels", {})
    required = (pod.get("affinity") or {}).get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution") or []
    check(any(t.get("topologyKey") == "kubernetes.io/hostname"
              and (t.get("labelSelector") or {}).get("matchLabels")
              and all(labels.get(k) == v for k, v in t["labelSelector"]["matchLabels"].items())
              for t in required),
          "one broker node per Kubernetes node (required podAntiAffinity by kubernetes.io/hostname)")
    roles = by_kind.get("Role", {})
    check(any("endpoints" in r.get("resources", []) and "get" in r.get("verbs", [])
              for role in roles.values() for r in role.get("rules", []))
          and pod.get("serviceAccountName") in by_kind.get("ServiceAccount", {}),
          "the pods' ServiceAccount may read the endpoints peer discovery needs")

    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    definitions = conf.get("load_definitions", "")
    mount = mounts.get("definitions", {})
    check(bool(mount) and os.path.dirname(definitions) == mount.get("mountPath")
          and "secret" in volumes.get("definitions", {}),
          "the definitions file rabbitmq.conf loads is the mounted Secret", definitions)
    check(any(t["metadata"]["name"] == mounts.get("data", {}).get("name")
              for t in spec.get("volumeClaimTemplates", [])),
          "each node keeps its data on a volume of its own")
    pdb = by_kind.get("PodDisruptionBudget", {}).get("rabbitmq", {}).get("spec", {})
    check(pdb.get("maxUnavailable") == 1, "voluntary disruptions take one node at a time")

    # Every queue of the topology is a quorum queue, so it is replicated at all.
    queues = json.loads(defs.render())["queues"]
    check(all(q["arguments"].get("x-queue-type") == "quorum" for q in queues),
          "every queue of the definitions is a quorum queue")

    client = by_kind.get("Service", {}).get("rabbitmq", {})
    ports = {p["name"]: p["port"] for p in client.get("spec", {}).get("ports", [])}
    check(ports.get("amqp") == 5672, "Service rabbitmq serves AMQP on 5672")
    for doc in load_yaml_all("deploy/k8s/secrets.yaml"):
        for key, url in (doc.get("stringData") or {}).items():
            if key.endswith("AMQP_URL"):
                hosts = [urlsplit(u).hostname for u in url.split(",")]
                check(all(h is not None and re.fullmatch(rf"(rabbitmq-\d+\.rabbitmq-nodes|rabbitmq)\.{namespace}\.svc(\.cluster\.local)?", h)
                          for h in hosts),
                      f"{doc['metadata']['name']}: {key} points at the broker cluster", url)
