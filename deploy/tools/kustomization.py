"""The objects of a kustomization folder, for the checks of deploy/k8s's sub-layouts."""

import os


def objects_by_kind(root: str, base: str, check, load_yaml_all):
    """(namespace, {kind: {name: object}}) of what `base`/kustomization.yaml lists, after
    checking that it lists every manifest in the folder; None when there is no
    kustomization.yaml (already reported as a failed check)."""
    kust = load_yaml_all(f"{base}/kustomization.yaml")
    if not kust:
        check(False, f"{base}/kustomization.yaml exists")
        return None
    resources = kust[0].get("resources", [])
    on_disk = sorted(f for f in os.listdir(os.path.join(root, base))
                     if f.endswith(".yaml") and f != "kustomization.yaml")
    check(sorted(resources) == on_disk,
          f"{os.path.basename(base)}/kustomization.yaml lists every manifest there",
          f"listed {sorted(resources)}, on disk {on_disk}")
    by_kind: dict = {}
    for rel in resources:
        for doc in load_yaml_all(f"{base}/{rel}"):
            by_kind.setdefault(doc.get("kind"), {})[doc.get("metadata", {}).get("name")] = doc
    return kust[0].get("namespace"), by_kind
