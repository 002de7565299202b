"""Checks the Kubernetes base beyond its schemas (kubernetes-validate checks those): the
kustomization lists every manifest; every service of the compose file has a Deployment, a
Service and a PodDisruptionBudget; each Deployment runs `serve <its name>`, probes its own gRPC
port natively, asks for resources, mounts its own Secret read-only and reads no other Secret,
connects to the broker with its own account and only checks the topology."""

import glob
import os
import sys

import yaml

base, compose_path = sys.argv[1], sys.argv[2]
with open(compose_path) as f:
    compose = yaml.safe_load(f)
expected = {s["command"][1] for s in compose["services"].values()
            if (s.get("command") or [])[:1] == ["serve"]}

with open(os.path.join(base, "kustomization.yaml")) as f:
    listed = set(yaml.safe_load(f)["resources"])
manifests = {os.path.basename(p) for p in glob.glob(os.path.join(base, "*.yaml"))} - {"kustomization.yaml"}
errors = [f"kustomization.yaml does not list {m}" for m in sorted(manifests - listed)]
errors += [f"kustomization.yaml lists missing {m}" for m in sorted(listed - manifests)]

kinds = {}
for path in sorted(manifests):
    with open(os.path.join(base, path)) as f:
        for doc in yaml.safe_load_all(f):
            kinds.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc

for name in sorted(expected):
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        if name not in kinds.get(kind, {}):
            errors.append(f"{name}: no {kind}")
    deployment = kinds.get("Deployment", {}).get(name)
    if not deployment:
        continue
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    if container.get("args") != ["serve", name]:
        errors.append(f"{name}: must run `serve {name}`")
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if container.get(probe, {}).get("grpc", {}).get("port") != port:
            errors.append(f"{name}: {probe} must be a gRPC probe on {port}")
    if not container.get("resources", {}).get("requests"):
        errors.append(f"{name}: no resource requests")
    own = f"opsconductor-{name}"
    secrets = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    secrets |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})}
    if secrets != {own}:
        errors.append(f"{name}: must read only the Secret {own}, reads {sorted(secrets)}")
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    secret_volume = next((v["name"] for v in pod.get("volumes", []) if "secret" in v), None)
    if not mounts.get(secret_volume, {}).get("readOnly"):
        errors.append(f"{name}: its Secret must be mounted read-only")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    if not str(env.get("AMQP_URL", "")).startswith(f"amqp://{name}@"):
        errors.append(f"{name}: must use its own broker account")
    if env.get("OPSCONDUCTOR_AMQP_DECLARE") != "verify":
        errors.append(f"{name}: must run with OPSCONDUCTOR_AMQP_DECLARE=verify")
    if pod.get("automountServiceAccountToken") is not False:
        errors.append(f"{name}: must not mount a Kubernetes API token")

for e in errors:
    print(f"{base}: {e}")
if errors:
    sys.exit(1)
print(f"{base}: valid ({len(expected)} services)")
